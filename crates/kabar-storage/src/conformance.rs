//! Backend-agnostic conformance suite. Every storage backend must pass it.
//!
//! Each check is a public async fn taking any [`Store`] (including `dyn Store`), so a failure is
//! named after the check. Checks use their own user names, so [`run_all`] can run them one after
//! another on a single fresh store. The suite is runtime-agnostic; the caller drives the futures.
//!
//! A backend's test file is a few lines with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! mod in_memory {
//!     kabar_storage::conformance_tests!(Box::new(MyStore::open_in_memory().unwrap()));
//! }
//! ```
//!
//! which expands to one `#[tokio::test]` per check, each on a fresh store made by the expression
//! (evaluated inside the async test, so it may `.await`). The expression may yield anything that
//! dereferences to a store: a `Box`, an `Arc`, a [`SharedStore`](crate::SharedStore) or a guard
//! type that cleans up a database on drop.

use crate::{AccountCredentials, RosterItem, ScramCredentials, Store, StoreError, Subscription};

/// Expands to one `#[tokio::test]` per conformance check. `$make` is evaluated inside each async
/// test (it may `.await`) and must yield a value that dereferences to a [`Store`](crate::Store).
/// The calling crate needs `tokio` (with `macros` and `rt`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            accounts_create_get_delete,
            accounts_duplicate_create,
            accounts_set_credentials,
            accounts_list_sorted,
            delete_account_removes_user_data,
            roster_put_get_replace,
            roster_remove,
            roster_versions_increase,
            roster_fields_round_trip,
            roster_users_isolated,
            roster_version_survives_account_recreation,
            offline_order_and_ids,
            offline_remove_by_ids,
            offline_quota,
            kv_get_put_overwrite_delete,
            kv_list_sorted,
            kv_isolation,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let fixture = $make;
                $crate::conformance::$check(::core::ops::Deref::deref(&fixture)).await;
            }
        )*
    };
}

/// Runs every check on one fresh store (checks use disjoint users, so they do not interfere).
pub async fn run_all<S: Store + ?Sized>(s: &S) {
    accounts_create_get_delete(s).await;
    accounts_duplicate_create(s).await;
    accounts_set_credentials(s).await;
    accounts_list_sorted(s).await;
    delete_account_removes_user_data(s).await;
    roster_put_get_replace(s).await;
    roster_remove(s).await;
    roster_versions_increase(s).await;
    roster_fields_round_trip(s).await;
    roster_users_isolated(s).await;
    roster_version_survives_account_recreation(s).await;
    offline_order_and_ids(s).await;
    offline_remove_by_ids(s).await;
    offline_quota(s).await;
    kv_get_put_overwrite_delete(s).await;
    kv_list_sorted(s).await;
    kv_isolation(s).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Distinct, recognisable credentials; `seed` varies every field.
fn creds(seed: u8) -> AccountCredentials {
    let scram = |len: usize, tag: u8| ScramCredentials {
        salt: (0..16u8).map(|i| i ^ seed ^ tag).collect(),
        iterations: 4096 + u32::from(seed) + u32::from(tag),
        stored_key: (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed ^ tag).collect(),
        server_key: (0..len).map(|i| (i as u8).wrapping_mul(13) ^ seed ^ tag ^ 0xff).collect(),
    };
    AccountCredentials {
        scram_sha1: scram(20, 1),
        scram_sha256: scram(32, 2),
    }
}

fn item(jid: &str) -> RosterItem {
    RosterItem {
        jid: jid.to_owned(),
        ..RosterItem::default()
    }
}

fn is_sorted<T: Ord>(v: &[T]) -> bool {
    v.windows(2).all(|w| w[0] <= w[1])
}

#[track_caller]
fn must<T>(r: crate::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected store error: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts

pub async fn accounts_create_get_delete<S: Store + ?Sized>(s: &S) {
    let u = "acc-basic@conformance.example";
    let c = creds(1);
    assert!(
        must(s.credentials(u).await, "credentials of missing account").is_none(),
        "credentials of a missing account must be None"
    );
    must(s.create_account(u, &c).await, "create_account");
    assert_eq!(
        must(s.credentials(u).await, "credentials"),
        Some(c.clone()),
        "credentials must round-trip exactly"
    );
    assert!(
        must(s.list_accounts().await, "list_accounts").iter().any(|a| a == u),
        "created account must be listed"
    );
    assert!(must(s.delete_account(u).await, "delete_account"), "delete of an existing account returns true");
    assert!(
        must(s.credentials(u).await, "credentials after delete").is_none(),
        "credentials must be gone after delete"
    );
    assert!(
        !must(s.list_accounts().await, "list_accounts").iter().any(|a| a == u),
        "deleted account must not be listed"
    );
    assert!(
        !must(s.delete_account(u).await, "second delete_account"),
        "delete of a missing account returns false"
    );
    // The name is free again.
    must(s.create_account(u, &creds(2)).await, "re-create after delete");
    assert_eq!(
        must(s.credentials(u).await, "credentials after re-create"),
        Some(creds(2)),
        "re-created account has the new credentials"
    );
}

pub async fn accounts_duplicate_create<S: Store + ?Sized>(s: &S) {
    let u = "acc-dup@conformance.example";
    must(s.create_account(u, &creds(3)).await, "create_account");
    let r = s.create_account(u, &creds(4)).await;
    assert!(
        matches!(r, Err(StoreError::AlreadyExists)),
        "second create_account must fail with AlreadyExists, got {r:?}"
    );
    assert_eq!(
        must(s.credentials(u).await, "credentials"),
        Some(creds(3)),
        "a failed duplicate create must not touch the existing credentials"
    );
    let n = must(s.list_accounts().await, "list_accounts").iter().filter(|a| *a == u).count();
    assert_eq!(n, 1, "account must be listed exactly once");
}

pub async fn accounts_set_credentials<S: Store + ?Sized>(s: &S) {
    let u = "acc-setcreds@conformance.example";
    let missing = "acc-setcreds-missing@conformance.example";
    must(s.create_account(u, &creds(5)).await, "create_account");
    assert!(
        must(s.set_credentials(u, &creds(6)).await, "set_credentials"),
        "set_credentials on an existing account returns true"
    );
    assert_eq!(
        must(s.credentials(u).await, "credentials"),
        Some(creds(6)),
        "set_credentials must replace both credential sets"
    );
    assert!(
        !must(s.set_credentials(missing, &creds(7)).await, "set_credentials on missing"),
        "set_credentials on a missing account returns false"
    );
    assert!(
        must(s.credentials(missing).await, "credentials of missing").is_none(),
        "set_credentials on a missing account must not create it"
    );
    assert!(
        !must(s.list_accounts().await, "list_accounts").iter().any(|a| a == missing),
        "set_credentials on a missing account must not list it"
    );
}

pub async fn accounts_list_sorted<S: Store + ?Sized>(s: &S) {
    let users = [
        "zz-list@conformance.example",
        "aa-list@conformance.example",
        "ünicode-list@conformance.example",
        "mm-list@conformance.example",
        "Ab-list@conformance.example",
    ];
    for (i, u) in users.iter().enumerate() {
        must(s.create_account(u, &creds(10 + i as u8)).await, "create_account");
    }
    let gone = "gone-list@conformance.example";
    must(s.create_account(gone, &creds(20)).await, "create_account");
    assert!(must(s.delete_account(gone).await, "delete_account"), "delete returns true");

    let listed = must(s.list_accounts().await, "list_accounts");
    assert!(is_sorted(&listed), "list_accounts must be sorted (byte order): {listed:?}");
    let mut dedup = listed.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), listed.len(), "list_accounts must not repeat accounts");
    for u in users {
        assert!(listed.iter().any(|a| a == u), "{u} must be listed");
    }
    assert!(!listed.iter().any(|a| a == gone), "deleted account must not be listed");
}

pub async fn delete_account_removes_user_data<S: Store + ?Sized>(s: &S) {
    let a = "del-a@conformance.example";
    let b = "del-b@conformance.example";
    for u in [a, b] {
        must(s.create_account(u, &creds(30)).await, "create_account");
        let mut it = item("friend@conformance.example");
        it.groups = vec!["Friends".into()];
        it.name = Some("Friend".into());
        must(s.put_roster_item(u, &it).await, "put_roster_item");
        must(s.put_roster_item(u, &item("other@conformance.example")).await, "put_roster_item");
        must(s.push_offline(u, b"<message/>", 100).await, "push_offline");
        must(s.push_offline(u, b"<message>2</message>", 100).await, "push_offline");
        must(s.kv_put(u, "vcard", "", b"<vCard/>").await, "kv_put");
        must(s.kv_put(u, "blocklist", "x@y", b"1").await, "kv_put");
    }
    let b_roster = must(s.roster(b).await, "roster");
    let b_offline = must(s.offline_messages(b).await, "offline_messages");
    let b_kv = must(s.kv_list(b, "blocklist").await, "kv_list");

    assert!(must(s.delete_account(a).await, "delete_account"), "delete returns true");

    assert!(must(s.credentials(a).await, "credentials").is_none(), "account gone");
    assert!(must(s.roster(a).await, "roster").0.is_empty(), "roster of deleted user must be empty");
    assert!(
        must(s.roster_item(a, "friend@conformance.example").await, "roster_item").is_none(),
        "roster item of deleted user must be gone"
    );
    assert!(
        must(s.offline_messages(a).await, "offline_messages").is_empty(),
        "offline messages of deleted user must be gone"
    );
    assert!(must(s.kv_get(a, "vcard", "").await, "kv_get").is_none(), "kv of deleted user must be gone");
    assert!(
        must(s.kv_list(a, "blocklist").await, "kv_list").is_empty(),
        "kv store of deleted user must be empty"
    );

    assert_eq!(must(s.roster(b).await, "roster"), b_roster, "other user's roster untouched");
    assert_eq!(
        must(s.offline_messages(b).await, "offline_messages"),
        b_offline,
        "other user's offline messages untouched"
    );
    assert_eq!(must(s.kv_list(b, "blocklist").await, "kv_list"), b_kv, "other user's kv untouched");
    assert_eq!(
        must(s.kv_get(b, "vcard", "").await, "kv_get").as_deref(),
        Some(&b"<vCard/>"[..]),
        "other user's vcard untouched"
    );
    assert!(must(s.credentials(b).await, "credentials").is_some(), "other account untouched");
}

// ---------------------------------------------------------------------------------------------
// Roster

pub async fn roster_put_get_replace<S: Store + ?Sized>(s: &S) {
    let u = "roster-put@conformance.example";
    let c = "juliet@conformance.example";
    assert!(
        must(s.roster_item(u, c).await, "roster_item").is_none(),
        "missing item must be None"
    );
    assert!(must(s.roster(u).await, "roster").0.is_empty(), "fresh roster is empty");

    let first = RosterItem {
        jid: c.into(),
        name: Some("Juliet".into()),
        subscription: Subscription::None,
        ask: true,
        approved: false,
        groups: vec!["Friends".into()],
    };
    let v1 = must(s.put_roster_item(u, &first).await, "put_roster_item");
    assert_eq!(must(s.roster_item(u, c).await, "roster_item"), Some(first.clone()), "item round-trips");
    let (items, v) = must(s.roster(u).await, "roster");
    assert_eq!(items, vec![first.clone()], "roster holds the item");
    assert_eq!(v, v1, "roster() reports the version put_roster_item returned");

    let replaced = RosterItem {
        jid: c.into(),
        name: None,
        subscription: Subscription::Both,
        ask: false,
        approved: true,
        groups: vec!["Capulets".into(), "Verona".into()],
    };
    let v2 = must(s.put_roster_item(u, &replaced).await, "put_roster_item (replace)");
    assert!(v2 > v1, "replace must raise the version ({v1} -> {v2})");
    assert_eq!(
        must(s.roster_item(u, c).await, "roster_item"),
        Some(replaced.clone()),
        "replace overwrites every field, including clearing the name and groups"
    );
    let (items, v) = must(s.roster(u).await, "roster");
    assert_eq!(items, vec![replaced], "replace must not duplicate the item");
    assert_eq!(v, v2, "roster() reports the latest version");

    // Several contacts.
    let romeo = item("romeo@conformance.example");
    must(s.put_roster_item(u, &romeo).await, "put_roster_item");
    let (items, _) = must(s.roster(u).await, "roster");
    assert_eq!(items.len(), 2, "two distinct contacts");
    assert!(items.contains(&romeo), "second contact present");
}

pub async fn roster_remove<S: Store + ?Sized>(s: &S) {
    let u = "roster-remove@conformance.example";
    let c = "nurse@conformance.example";
    let keep = "friar@conformance.example";
    let mut it = item(c);
    it.groups = vec!["Staff".into()];
    must(s.put_roster_item(u, &it).await, "put_roster_item");
    let v_put = must(s.put_roster_item(u, &item(keep)).await, "put_roster_item");

    let v_rm = must(s.remove_roster_item(u, c).await, "remove_roster_item");
    let Some(v_rm) = v_rm else {
        panic!("removing an existing item must return Some(version)");
    };
    assert!(v_rm > v_put, "remove must raise the version ({v_put} -> {v_rm})");
    assert!(must(s.roster_item(u, c).await, "roster_item").is_none(), "removed item is gone");
    let (items, v) = must(s.roster(u).await, "roster");
    assert_eq!(items, vec![item(keep)], "only the other item remains");
    assert_eq!(v, v_rm, "roster() reports the version remove returned");

    assert_eq!(
        must(s.remove_roster_item(u, c).await, "remove_roster_item (again)"),
        None,
        "removing a missing item returns None"
    );
    assert_eq!(
        must(s.remove_roster_item(u, "never@conformance.example").await, "remove_roster_item"),
        None,
        "removing a never-present item returns None"
    );
    assert_eq!(
        must(s.roster(u).await, "roster").1,
        v_rm,
        "removing a missing item must not change the version"
    );

    // Re-adding after removal starts fresh (no stale groups).
    let v_again = must(s.put_roster_item(u, &item(c)).await, "put_roster_item (re-add)");
    assert!(v_again > v_rm, "re-add raises the version");
    assert_eq!(
        must(s.roster_item(u, c).await, "roster_item"),
        Some(item(c)),
        "re-added item has no leftover groups"
    );
}

pub async fn roster_versions_increase<S: Store + ?Sized>(s: &S) {
    let u = "roster-versions@conformance.example";
    let (_, mut last) = must(s.roster(u).await, "roster");
    let mut seen = vec![last];
    for round in 0..5u8 {
        for c in ["a@v.example", "b@v.example", "c@v.example"] {
            let mut it = item(c);
            it.name = Some(format!("round {round}"));
            let v = must(s.put_roster_item(u, &it).await, "put_roster_item");
            assert!(v > last, "version must strictly increase on put ({last} -> {v})");
            assert_eq!(must(s.roster(u).await, "roster").1, v, "roster() reports the new version");
            last = v;
            seen.push(v);
        }
        let v = must(s.remove_roster_item(u, "b@v.example").await, "remove_roster_item");
        let Some(v) = v else { panic!("remove of an existing item returns Some") };
        assert!(v > last, "version must strictly increase on remove ({last} -> {v})");
        last = v;
        seen.push(v);
        assert_eq!(
            must(s.remove_roster_item(u, "b@v.example").await, "remove_roster_item"),
            None,
            "second remove returns None"
        );
        assert_eq!(must(s.roster(u).await, "roster").1, last, "no-op remove keeps the version");
    }
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a version is never reused: {seen:?}");

    // Another user's changes never move this user's version backwards.
    let other = "roster-versions-other@conformance.example";
    for _ in 0..3 {
        must(s.put_roster_item(other, &item("x@v.example")).await, "put_roster_item");
    }
    assert_eq!(
        must(s.roster(u).await, "roster").1,
        last,
        "another user's changes must not change this user's version"
    );
    let v = must(s.put_roster_item(u, &item("d@v.example")).await, "put_roster_item");
    assert!(v > last, "version keeps increasing ({last} -> {v})");
}

pub async fn roster_fields_round_trip<S: Store + ?Sized>(s: &S) {
    let u = "roster-fields@conformance.example";
    let subs = [Subscription::None, Subscription::To, Subscription::From, Subscription::Both];
    let mut expected = Vec::new();
    let mut n = 0;
    for sub in subs {
        for ask in [false, true] {
            for approved in [false, true] {
                n += 1;
                let it = RosterItem {
                    jid: format!("c{n}@fields.example"),
                    name: if n % 2 == 0 { Some(format!("Contact {n}")) } else { None },
                    subscription: sub,
                    ask,
                    approved,
                    groups: (0..(n % 4)).map(|g| format!("group {g}")).collect(),
                };
                must(s.put_roster_item(u, &it).await, "put_roster_item");
                expected.push(it);
            }
        }
    }
    let unicode = RosterItem {
        jid: "jülïet@例え.example".into(),
        name: Some("Джульетта 💌 ジュリエット".into()),
        subscription: Subscription::From,
        ask: true,
        approved: true,
        // Order is preserved; odd characters survive; an empty-string group too.
        groups: vec!["Zeta".into(), "Ålpha \"quoted\", [x]".into(), "家族".into(), String::new()],
    };
    must(s.put_roster_item(u, &unicode).await, "put_roster_item");
    expected.push(unicode.clone());
    let empty_name = RosterItem {
        jid: "empty-name@fields.example".into(),
        name: Some(String::new()),
        ..RosterItem::default()
    };
    must(s.put_roster_item(u, &empty_name).await, "put_roster_item");
    expected.push(empty_name);

    for e in &expected {
        assert_eq!(
            must(s.roster_item(u, &e.jid).await, "roster_item").as_ref(),
            Some(e),
            "roster item must round-trip exactly (subscription, ask, approved, name, group order)"
        );
    }
    let (mut items, _) = must(s.roster(u).await, "roster");
    items.sort_by(|a, b| a.jid.cmp(&b.jid));
    expected.sort_by(|a, b| a.jid.cmp(&b.jid));
    assert_eq!(items, expected, "roster() returns every item exactly");
}

pub async fn roster_users_isolated<S: Store + ?Sized>(s: &S) {
    let a = "roster-iso-a@conformance.example";
    let b = "roster-iso-b@conformance.example";
    let c = "shared@conformance.example";
    let mut ia = item(c);
    ia.name = Some("A's view".into());
    ia.subscription = Subscription::Both;
    let mut ib = item(c);
    ib.name = Some("B's view".into());
    ib.groups = vec!["B group".into()];
    must(s.put_roster_item(a, &ia).await, "put_roster_item");
    must(s.put_roster_item(b, &ib).await, "put_roster_item");
    must(s.put_roster_item(b, &item("only-b@conformance.example")).await, "put_roster_item");

    assert_eq!(must(s.roster_item(a, c).await, "roster_item"), Some(ia.clone()), "A's item");
    assert_eq!(must(s.roster_item(b, c).await, "roster_item"), Some(ib.clone()), "B's item");
    assert_eq!(must(s.roster(a).await, "roster").0, vec![ia.clone()], "A sees only its own item");
    assert!(
        must(s.roster_item(a, "only-b@conformance.example").await, "roster_item").is_none(),
        "A must not see B's contacts"
    );

    let vb = must(s.roster(b).await, "roster").1;
    assert!(must(s.remove_roster_item(a, c).await, "remove_roster_item").is_some(), "remove A's item");
    assert!(must(s.roster(a).await, "roster").0.is_empty(), "A's roster now empty");
    assert_eq!(
        must(s.roster_item(b, c).await, "roster_item"),
        Some(ib),
        "removing A's item must not touch B's"
    );
    assert_eq!(must(s.roster(b).await, "roster").1, vb, "B's version untouched by A's change");
    assert_eq!(
        must(s.remove_roster_item(a, "only-b@conformance.example").await, "remove_roster_item"),
        None,
        "A cannot remove B's contact"
    );
    assert_eq!(must(s.roster(b).await, "roster").0.len(), 2, "B still has both items");
}

/// XEP-0237: a client caching the roster of a deleted account must not see a matching version for
/// the re-created account's different roster.
pub async fn roster_version_survives_account_recreation<S: Store + ?Sized>(s: &S) {
    let u = "roster-recreate@conformance.example";
    must(s.create_account(u, &creds(40)).await, "create_account");
    let mut v_old = 0;
    for c in ["a@r.example", "b@r.example", "c@r.example"] {
        v_old = must(s.put_roster_item(u, &item(c)).await, "put_roster_item");
    }
    assert!(must(s.delete_account(u).await, "delete_account"), "delete returns true");
    must(s.create_account(u, &creds(41)).await, "re-create account");
    let (items, v_empty) = must(s.roster(u).await, "roster");
    assert!(items.is_empty(), "re-created account starts with an empty roster");
    assert_ne!(v_empty, v_old, "empty roster of the re-created account must not reuse the old version");
    let v_new = must(s.put_roster_item(u, &item("a@r.example")).await, "put_roster_item");
    assert!(
        v_new > v_old,
        "versions after re-creation must exceed every version of the deleted account ({v_old} -> {v_new})"
    );
}

// ---------------------------------------------------------------------------------------------
// Offline messages

pub async fn offline_order_and_ids<S: Store + ?Sized>(s: &S) {
    let u = "offline-order@conformance.example";
    let other = "offline-order-other@conformance.example";
    assert!(
        must(s.offline_messages(u).await, "offline_messages").is_empty(),
        "fresh user has no offline messages"
    );
    let stanzas: Vec<Vec<u8>> = vec![
        b"<message id='1'/>".to_vec(),
        "<message id='2'><body>héllo 👋</body></message>".as_bytes().to_vec(),
        vec![0, 159, 255, 1, 0, 254], // not UTF-8, embedded NULs: stanzas are opaque bytes
        Vec::new(),
        vec![b'x'; 70_000],
    ];
    let mut ids = Vec::new();
    for (i, st) in stanzas.iter().enumerate() {
        ids.push(must(s.push_offline(u, st, 1000).await, "push_offline"));
        // Interleave another user's messages.
        must(s.push_offline(other, format!("<other n='{i}'/>").as_bytes(), 1000).await, "push_offline");
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must strictly increase: {ids:?}");
    let got = must(s.offline_messages(u).await, "offline_messages");
    let expected: Vec<(u64, Vec<u8>)> = ids.iter().copied().zip(stanzas.iter().cloned()).collect();
    assert_eq!(got, expected, "offline messages come back oldest first, byte for byte, with their ids");
    let theirs = must(s.offline_messages(other).await, "offline_messages");
    assert_eq!(theirs.len(), stanzas.len(), "other user has only its own messages");
    assert!(
        theirs.iter().all(|(_, st)| st.starts_with(b"<other")),
        "other user's queue holds only its own stanzas"
    );
}

pub async fn offline_remove_by_ids<S: Store + ?Sized>(s: &S) {
    let u = "offline-remove@conformance.example";
    let other = "offline-remove-other@conformance.example";
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(must(s.push_offline(u, format!("<m n='{i}'/>").as_bytes(), 100).await, "push_offline"));
    }
    let other_id = must(s.push_offline(other, b"<theirs/>", 100).await, "push_offline");

    must(s.remove_offline(u, &[ids[1], ids[3]]).await, "remove_offline");
    let got: Vec<u64> = must(s.offline_messages(u).await, "offline_messages").into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, vec![ids[0], ids[2], ids[4], ids[5]], "the named ids are gone, order of the rest kept");

    must(s.remove_offline(u, &[]).await, "remove_offline(empty)");
    must(s.remove_offline(u, &[ids[1], u64::MAX, 0]).await, "remove_offline(unknown ids)");
    assert_eq!(
        must(s.offline_messages(u).await, "offline_messages").len(),
        4,
        "removing unknown or already removed ids is a no-op"
    );

    must(s.remove_offline(u, &[other_id]).await, "remove_offline(other user's id)");
    assert_eq!(
        must(s.offline_messages(other).await, "offline_messages"),
        vec![(other_id, b"<theirs/>".to_vec())],
        "a user cannot remove another user's messages"
    );

    let rest: Vec<u64> = vec![ids[0], ids[2], ids[4], ids[5]];
    must(s.remove_offline(u, &rest).await, "remove_offline(rest)");
    assert!(must(s.offline_messages(u).await, "offline_messages").is_empty(), "all removed");

    let max_seen = ids.iter().copied().chain([other_id]).max().unwrap_or(0);
    let next = must(s.push_offline(u, b"<later/>", 100).await, "push_offline");
    assert!(next > max_seen, "ids are never reused after removal ({max_seen} -> {next})");
}

pub async fn offline_quota<S: Store + ?Sized>(s: &S) {
    let u = "offline-quota@conformance.example";
    let a = must(s.push_offline(u, b"<one/>", 2).await, "push_offline");
    must(s.push_offline(u, b"<two/>", 2).await, "push_offline");
    let r = s.push_offline(u, b"<three/>", 2).await;
    assert!(matches!(r, Err(StoreError::QuotaExceeded)), "third push over limit 2 must be QuotaExceeded, got {r:?}");
    let held: Vec<Vec<u8>> = must(s.offline_messages(u).await, "offline_messages").into_iter().map(|(_, st)| st).collect();
    assert_eq!(held, vec![b"<one/>".to_vec(), b"<two/>".to_vec()], "a refused push stores nothing");

    // A larger limit admits more; the limit is checked per push.
    must(s.push_offline(u, b"<three/>", 3).await, "push_offline with limit 3");
    let r = s.push_offline(u, b"<four/>", 3).await;
    assert!(matches!(r, Err(StoreError::QuotaExceeded)), "limit 3 reached, got {r:?}");

    must(s.remove_offline(u, &[a]).await, "remove_offline");
    must(s.push_offline(u, b"<four/>", 3).await, "push after freeing space");
    let held: Vec<Vec<u8>> = must(s.offline_messages(u).await, "offline_messages").into_iter().map(|(_, st)| st).collect();
    assert_eq!(held, vec![b"<two/>".to_vec(), b"<three/>".to_vec(), b"<four/>".to_vec()], "queue after freeing");

    // The quota is per user.
    let v = "offline-quota-other@conformance.example";
    must(s.push_offline(v, b"<x/>", 1).await, "other user's first push");

    let z = "offline-quota-zero@conformance.example";
    let r = s.push_offline(z, b"<nope/>", 0).await;
    assert!(matches!(r, Err(StoreError::QuotaExceeded)), "limit 0 refuses everything, got {r:?}");
    assert!(
        must(s.offline_messages(z).await, "offline_messages").is_empty(),
        "refused push with limit 0 stores nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Key-value

pub async fn kv_get_put_overwrite_delete<S: Store + ?Sized>(s: &S) {
    let u = "kv-basic@conformance.example";
    assert!(must(s.kv_get(u, "vcard", "").await, "kv_get").is_none(), "missing key is None");
    must(s.kv_put(u, "vcard", "", b"<vCard>1</vCard>").await, "kv_put");
    assert_eq!(
        must(s.kv_get(u, "vcard", "").await, "kv_get").as_deref(),
        Some(&b"<vCard>1</vCard>"[..]),
        "value round-trips (empty key allowed)"
    );
    must(s.kv_put(u, "vcard", "", b"<vCard>2</vCard>").await, "kv_put (overwrite)");
    assert_eq!(
        must(s.kv_get(u, "vcard", "").await, "kv_get").as_deref(),
        Some(&b"<vCard>2</vCard>"[..]),
        "put overwrites"
    );
    assert_eq!(must(s.kv_list(u, "vcard").await, "kv_list").len(), 1, "overwrite does not duplicate");

    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    must(s.kv_put(u, "blob", "bin", &binary).await, "kv_put binary");
    assert_eq!(must(s.kv_get(u, "blob", "bin").await, "kv_get"), Some(binary), "binary value round-trips");
    must(s.kv_put(u, "blob", "empty", b"").await, "kv_put empty");
    assert_eq!(
        must(s.kv_get(u, "blob", "empty").await, "kv_get"),
        Some(Vec::new()),
        "an empty value is present, not missing"
    );
    must(s.kv_put(u, "blob", "ключ 🔑", b"unicode key").await, "kv_put unicode key");
    assert_eq!(
        must(s.kv_get(u, "blob", "ключ 🔑").await, "kv_get").as_deref(),
        Some(&b"unicode key"[..]),
        "unicode key round-trips"
    );

    assert!(must(s.kv_delete(u, "vcard", "").await, "kv_delete"), "delete of present key returns true");
    assert!(must(s.kv_get(u, "vcard", "").await, "kv_get").is_none(), "deleted key is gone");
    assert!(!must(s.kv_delete(u, "vcard", "").await, "kv_delete"), "delete of missing key returns false");
    assert!(
        !must(s.kv_delete(u, "nostore", "nokey").await, "kv_delete"),
        "delete in a missing store returns false"
    );
    assert!(must(s.kv_delete(u, "blob", "empty").await, "kv_delete"), "empty value counts as existing");
}

pub async fn kv_list_sorted<S: Store + ?Sized>(s: &S) {
    let u = "kv-list@conformance.example";
    assert!(must(s.kv_list(u, "items").await, "kv_list").is_empty(), "missing store lists empty");
    let keys = ["pear", "apple", "Zebra", "äpfel", "banana", "apple2", "", "10", "9"];
    for (i, k) in keys.iter().enumerate() {
        let value: Vec<u8> = vec![i as u8, 0, 255, b'v'];
        must(s.kv_put(u, "items", k, &value).await, "kv_put");
    }
    must(s.kv_put(u, "items", "banana", b"overwritten").await, "kv_put");
    must(s.kv_put(u, "other-store", "aaa", b"elsewhere").await, "kv_put");
    assert!(must(s.kv_delete(u, "items", "pear").await, "kv_delete"), "delete pear");

    let listed = must(s.kv_list(u, "items").await, "kv_list");
    let listed_keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    let mut expected_keys: Vec<&str> = keys.iter().copied().filter(|k| *k != "pear").collect();
    expected_keys.sort();
    assert_eq!(listed_keys, expected_keys, "kv_list is sorted by key (byte order) and complete");
    for (k, v) in &listed {
        let expected: Vec<u8> = if k == "banana" {
            b"overwritten".to_vec()
        } else {
            let i = keys.iter().position(|x| x == k).unwrap_or(usize::MAX);
            vec![i as u8, 0, 255, b'v']
        };
        assert_eq!(v, &expected, "value of {k:?} in kv_list");
    }
}

pub async fn kv_isolation<S: Store + ?Sized>(s: &S) {
    let a = "kv-iso-a@conformance.example";
    let b = "kv-iso-b@conformance.example";
    must(s.kv_put(a, "s1", "k", b"a-s1").await, "kv_put");
    must(s.kv_put(a, "s2", "k", b"a-s2").await, "kv_put");
    must(s.kv_put(b, "s1", "k", b"b-s1").await, "kv_put");

    assert_eq!(must(s.kv_get(a, "s1", "k").await, "kv_get").as_deref(), Some(&b"a-s1"[..]), "a/s1");
    assert_eq!(must(s.kv_get(a, "s2", "k").await, "kv_get").as_deref(), Some(&b"a-s2"[..]), "a/s2");
    assert_eq!(must(s.kv_get(b, "s1", "k").await, "kv_get").as_deref(), Some(&b"b-s1"[..]), "b/s1");
    assert!(must(s.kv_get(b, "s2", "k").await, "kv_get").is_none(), "b has no s2");

    assert_eq!(
        must(s.kv_list(a, "s1").await, "kv_list"),
        vec![("k".to_owned(), b"a-s1".to_vec())],
        "kv_list sees only its own user and store"
    );

    assert!(must(s.kv_delete(a, "s1", "k").await, "kv_delete"), "delete a/s1/k");
    assert!(must(s.kv_get(a, "s1", "k").await, "kv_get").is_none(), "a/s1/k gone");
    assert_eq!(
        must(s.kv_get(a, "s2", "k").await, "kv_get").as_deref(),
        Some(&b"a-s2"[..]),
        "same key in another store untouched"
    );
    assert_eq!(
        must(s.kv_get(b, "s1", "k").await, "kv_get").as_deref(),
        Some(&b"b-s1"[..]),
        "same key of another user untouched"
    );
}
