-- Reproduces the query plans shown in docs/STORAGE.md ("MAM queries and their plans").
--
--   eval "$(scripts/pg start)"
--   printf '[storage]\nbackend = "postgres"\nurl = "%s"\nschema = "explain"\n' "$KABAR_TEST_POSTGRES_URL" > /tmp/explain.toml
--   target/release/kabar user list --config /tmp/explain.toml     # creates the schema (migrations)
--   psql "$KABAR_TEST_POSTGRES_URL" -X -f crates/kabar-storage-postgres/explain.sql
--
-- Loads 300,000 archive items (200 owners x 1,500 messages, 25 peers each, bodies of six words from a
-- 2,000-word vocabulary; the first vocabulary word is in every body) — about 3 minutes on 2 cores —
-- then EXPLAIN ANALYZEs the statements archive.rs sends, with literal values in place of parameters.
SET search_path = explain;
CREATE TEMP TABLE vocab AS SELECT i, 'w' || md5(i::text)::text AS w FROM generate_series(1, 2000) i;
INSERT INTO archive (owner, id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted, dedupe_key, search)
SELECT 'user' || o || '@localhost',
       substr(md5(o::text || '-' || n::text), 1, 16),
       'peer' || (n % 25) || '@localhost',
       NULL,
       CASE WHEN n % 2 = 0 THEN 'in' ELSE 'out' END,
       1700000000000000 + n::bigint * 60000000 + o,
       'm' || n, NULL, NULL,
       b.body, convert_to('<message/>', 'UTF8'), false, NULL,
       to_tsvector('simple', b.body)
FROM generate_series(1, 200) o, generate_series(1, 1500) n,
LATERAL (SELECT string_agg(substr(v.w, 1, 8), ' ') AS body
         FROM vocab v WHERE v.i IN (((o * 7919 + n * 104729) % 2000) + 1, ((n * 31) % 2000) + 1, ((o + n) % 2000) + 1,
                                    ((o * n) % 2000) + 1, ((n * n) % 2000) + 1, 1)) b;
ANALYZE archive;
\echo '--- 1. page forward, one peer, after a cursor (with + RSM after)'
EXPLAIN (ANALYZE, COSTS OFF) SELECT id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted FROM archive WHERE owner = 'user42@localhost' AND peer = 'peer7@localhost' AND (ts, id) > (1700030420000042, 'e5663f9562753e83') ORDER BY ts, id LIMIT 11;
\echo '--- 2. count of the same filter'
EXPLAIN (ANALYZE, COSTS OFF) SELECT COUNT(*) FROM archive WHERE owner = 'user42@localhost' AND peer = 'peer7@localhost';
\echo '--- 3. last page of the whole archive (RSM empty before)'
EXPLAIN (ANALYZE, COSTS OFF) SELECT id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted FROM archive WHERE owner = 'user42@localhost' ORDER BY ts DESC, id DESC LIMIT 11;
\echo '--- 4. time window (start/end)'
EXPLAIN (ANALYZE, COSTS OFF) SELECT id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted FROM archive WHERE owner = 'user42@localhost' AND ts >= 1700030000000000 AND ts <= 1700040000000000 ORDER BY ts, id LIMIT 11;
\echo '--- 5. full-text search, rare word'
EXPLAIN (ANALYZE, COSTS OFF) SELECT id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted FROM archive WHERE owner = 'user42@localhost' AND search @@ to_tsquery('simple', '''wf1c1592''') ORDER BY ts, id LIMIT 11;
\echo '--- 6. full-text search, word in every message'
EXPLAIN (ANALYZE, COSTS OFF) SELECT id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted FROM archive WHERE owner = 'user42@localhost' AND search @@ to_tsquery('simple', '''wc4ca423''') ORDER BY ts, id LIMIT 11;
\echo '--- 7. cursor id to position (every cursor, after_id, before_id)'
EXPLAIN (ANALYZE, COSTS OFF) SELECT ts FROM archive WHERE owner = 'user42@localhost' AND id = 'e5663f9562753e83';
\echo '--- 8. XEP-0308/0424 reference lookup (archive_find_refs)'
EXPLAIN (ANALYZE, COSTS OFF) SELECT id, peer, peer_full, direction, ts, message_id, origin_id, replaces, body, stanza, retracted FROM archive WHERE owner = 'user42@localhost' AND peer = 'peer7@localhost' AND direction = 'out' AND (message_id = 'm707' OR origin_id = 'm707' OR replaces = 'm707') ORDER BY ts, id LIMIT 1000;
\echo '--- 9. retention batch (archive_delete_before), nothing old enough: plan only'
EXPLAIN (COSTS OFF) DELETE FROM archive WHERE (owner, id) IN (SELECT owner, id FROM archive WHERE ts < 1700000100000000 ORDER BY ts LIMIT 2000);
