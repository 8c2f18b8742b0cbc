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

use crate::{
    AccountCredentials, ArchiveCursor, ArchiveItem, ArchivePage, ArchiveQuery, Direction, RosterItem,
    ScramCredentials, Store, StoreError, Subscription,
};

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
            archive_append_get_round_trip,
            archive_append_idempotent,
            archive_queued_appends_are_visible_after_flush,
            archive_paging_forward_and_backward,
            archive_query_filters,
            archive_fulltext_search,
            archive_edit_and_retract,
            archive_find_refs,
            archive_delete_all_and_retention,
            delete_account_removes_archive,
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
    archive_append_get_round_trip(s).await;
    archive_append_idempotent(s).await;
    archive_queued_appends_are_visible_after_flush(s).await;
    archive_paging_forward_and_backward(s).await;
    archive_query_filters(s).await;
    archive_fulltext_search(s).await;
    archive_edit_and_retract(s).await;
    archive_find_refs(s).await;
    archive_delete_all_and_retention(s).await;
    delete_account_removes_archive(s).await;
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
// ---------------------------------------------------------------------------------------------
// Message archive
//
// Archive checks use timestamps from `ARCHIVE_BASE_TS` on, except the retention check, which works
// below it: `archive_delete_before` spans every owner, and must not eat other checks' items.

/// 2023-11-14T22:13:20Z in Unix microseconds.
const ARCHIVE_BASE_TS: i64 = 1_700_000_000_000_000;

fn arch(id: &str, with: &str, direction: Direction, ts: i64, body: Option<&str>) -> ArchiveItem {
    ArchiveItem {
        id: id.to_owned(),
        with: with.to_owned(),
        with_full: None,
        direction,
        timestamp: ts,
        message_id: None,
        origin_id: None,
        replaces: None,
        body: body.map(str::to_owned),
        stanza: format!("<message xmlns='jabber:client' id='{id}'/>").into_bytes(),
        retracted: false,
    }
}

fn page_ids(page: &ArchivePage) -> Vec<String> {
    page.items.iter().map(|i| i.id.clone()).collect()
}

#[track_caller]
fn found(r: crate::Result<Option<ArchivePage>>, what: &str) -> ArchivePage {
    match must(r, what) {
        Some(p) => p,
        None => panic!("{what}: the store reported an unknown id where every id exists"),
    }
}

async fn search<S: Store + ?Sized>(s: &S, owner: &str, text: &str) -> Vec<String> {
    let q = ArchiveQuery { text: Some(text.to_owned()), max: 100, ..ArchiveQuery::default() };
    page_ids(&found(s.archive_query(owner, &q).await, "archive_query (text)"))
}

pub async fn archive_append_get_round_trip<S: Store + ?Sized>(s: &S) {
    let owner = "arch-rt@conformance.example";
    let item = ArchiveItem {
        id: "rt-1".into(),
        with: "peer@conformance.example".into(),
        with_full: Some("peer@conformance.example/phone ✓".into()),
        direction: Direction::Out,
        timestamp: ARCHIVE_BASE_TS + 123_456,
        message_id: Some("msg-1".into()),
        origin_id: Some("origin-1".into()),
        replaces: Some("msg-0".into()),
        body: Some("Grüße, \"quoted\" & <angled> — ok".into()),
        stanza: b"\x00\x01<message/>\xff".to_vec(),
        retracted: false,
    };
    assert!(must(s.archive_get(owner, "rt-1").await, "archive_get").is_none(), "missing item is None");
    assert!(must(s.archive_append(owner, &item, None).await, "archive_append"), "first append inserts");
    assert_eq!(
        must(s.archive_get(owner, "rt-1").await, "archive_get"),
        Some(item.clone()),
        "every field round-trips exactly"
    );
    assert!(
        must(s.archive_get("arch-rt-other@conformance.example", "rt-1").await, "archive_get").is_none(),
        "another owner does not see the item"
    );
    let mut bare = arch("rt-2", "peer@conformance.example", Direction::In, ARCHIVE_BASE_TS + 200_000, None);
    bare.retracted = true;
    assert!(must(s.archive_append(owner, &bare, None).await, "archive_append"), "append");
    assert_eq!(
        must(s.archive_get(owner, "rt-2").await, "archive_get"),
        Some(bare),
        "an item without optional fields round-trips (including the retracted flag)"
    );
}

/// Queued appends (the message hot path) keep their order and are all readable once
/// `archive_flush` returns.
pub async fn archive_queued_appends_are_visible_after_flush<S: Store + ?Sized>(s: &S) {
    let owner = "arch-queued@conformance.example";
    let peer = "peer@conformance.example";
    let items: Vec<ArchiveItem> = (0..50)
        .map(|n| arch(&format!("queued-{n:02}"), peer, Direction::Out, ARCHIVE_BASE_TS + n, Some("queued")))
        .collect();
    for item in &items {
        must(s.archive_append_queued(owner, item).await, "archive_append_queued");
    }
    must(s.archive_flush().await, "archive_flush");
    let page = found(s.archive_query(owner, &ArchiveQuery { max: 100, ..ArchiveQuery::default() }).await, "query");
    let want: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(page_ids(&page), want, "every queued item, in order");
}

pub async fn archive_append_idempotent<S: Store + ?Sized>(s: &S) {
    let owner = "arch-idem@conformance.example";
    let other = "arch-idem-other@conformance.example";
    let peer = "peer@conformance.example";
    let first = arch("idem-1", peer, Direction::In, ARCHIVE_BASE_TS, Some("first"));
    assert!(must(s.archive_append(owner, &first, None).await, "archive_append"), "first append inserts");
    let mut again = arch("idem-1", peer, Direction::Out, ARCHIVE_BASE_TS + 5, Some("changed"));
    again.stanza = b"<other/>".to_vec();
    assert!(
        !must(s.archive_append(owner, &again, None).await, "archive_append (same id)"),
        "appending an existing id returns false"
    );
    assert_eq!(
        must(s.archive_get(owner, "idem-1").await, "archive_get"),
        Some(first.clone()),
        "a repeated id changes nothing"
    );

    let imported = arch("idem-2", peer, Direction::In, ARCHIVE_BASE_TS - 1_000_000, Some("imported"));
    assert!(
        must(s.archive_append(owner, &imported, Some("import:abc")).await, "archive_append (dedupe)"),
        "first import inserts"
    );
    let reimported = arch("idem-3", peer, Direction::In, ARCHIVE_BASE_TS - 1_000_000, Some("imported"));
    assert!(
        !must(s.archive_append(owner, &reimported, Some("import:abc")).await, "archive_append (dedupe again)"),
        "importing the same dedupe key again (under a fresh id) adds nothing"
    );
    assert!(must(s.archive_get(owner, "idem-3").await, "archive_get").is_none(), "no item under the new id");
    let all = found(s.archive_query(owner, &ArchiveQuery { max: 100, ..ArchiveQuery::default() }).await, "query");
    assert_eq!(page_ids(&all), vec!["idem-2", "idem-1"], "exactly the two distinct items, in time order");
    assert_eq!(all.count, 2);

    // Ids and dedupe keys are per owner.
    assert!(must(s.archive_append(other, &first, None).await, "archive_append"), "same id, other owner");
    assert!(
        must(s.archive_append(other, &reimported, Some("import:abc")).await, "archive_append"),
        "same dedupe key, other owner"
    );
    // A different dedupe key with an existing id is still a repeat.
    assert!(
        !must(s.archive_append(owner, &first, Some("import:new")).await, "archive_append"),
        "an existing id is a repeat whatever the dedupe key"
    );
}

/// 53 items, pages of 10: forward from the start and backward from the end, every item exactly
/// once, in `(timestamp, id)` order (ids deliberately not in time order; one timestamp shared).
pub async fn archive_paging_forward_and_backward<S: Store + ?Sized>(s: &S) {
    let owner = "arch-paging@conformance.example";
    let peer = "peer@conformance.example";
    let mut expected = Vec::new();
    for i in 0..53i64 {
        // Items 20 and 21 share a timestamp; "id" order decides between them.
        let ts = ARCHIVE_BASE_TS + if i == 21 { 20 } else { i } * 1_000;
        let id = if i == 21 { "p-zz-tie".to_owned() } else { format!("p-{:02}", (i * 37) % 53) };
        expected.push((ts, id));
    }
    // Appended newest first: the store sorts.
    for (n, (ts, id)) in expected.iter().enumerate().rev() {
        let dir = if n % 2 == 0 { Direction::In } else { Direction::Out };
        must(s.archive_append(owner, &arch(id, peer, dir, *ts, Some("paging")), None).await, "archive_append");
    }
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    // Forward.
    let mut got = Vec::new();
    let mut cursor = ArchiveCursor::Start;
    let mut sizes = Vec::new();
    loop {
        let q = ArchiveQuery { cursor: cursor.clone(), max: 10, ..ArchiveQuery::default() };
        let page = found(s.archive_query(owner, &q).await, "archive_query (forward)");
        assert_eq!(page.count, 53, "count is the whole result set on every page");
        sizes.push(page.items.len());
        got.extend(page_ids(&page));
        if page.complete {
            break;
        }
        assert!(sizes.len() < 10, "forward paging must end");
        let last = page.last_id().expect("an incomplete page has items").to_owned();
        cursor = ArchiveCursor::After(last);
    }
    assert_eq!(sizes, vec![10, 10, 10, 10, 10, 3], "page sizes forward");
    assert_eq!(got, expected, "forward paging yields every item once, in chronological order");

    // Backward.
    let mut pages = Vec::new();
    let mut cursor = ArchiveCursor::End;
    loop {
        let q = ArchiveQuery { cursor: cursor.clone(), max: 10, ..ArchiveQuery::default() };
        let page = found(s.archive_query(owner, &q).await, "archive_query (backward)");
        assert_eq!(page.count, 53);
        let ids = page_ids(&page);
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| expected.iter().position(|e| e == id));
        assert_eq!(ids, sorted, "a page is in chronological order also when paging backward");
        let done = page.complete;
        let first = page.first_id().map(str::to_owned);
        pages.push(ids);
        if done {
            break;
        }
        assert!(pages.len() < 10, "backward paging must end");
        cursor = ArchiveCursor::Before(first.expect("an incomplete page has items"));
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 10, 10, 10, 3], "page sizes backward");
    let back: Vec<String> = pages.into_iter().rev().flatten().collect();
    assert_eq!(back, expected, "backward paging yields every item once");

    // Edges.
    let all = found(s.archive_query(owner, &ArchiveQuery { max: 53, ..ArchiveQuery::default() }).await, "query");
    assert!(all.complete, "a page holding exactly the rest is complete");
    assert_eq!(page_ids(&all), expected);
    let zero = found(s.archive_query(owner, &ArchiveQuery { max: 0, ..ArchiveQuery::default() }).await, "query");
    assert!(zero.items.is_empty(), "max 0 returns no items");
    assert_eq!(zero.count, 53, "max 0 still counts");
    assert!(!zero.complete, "max 0 over a non-empty set is not complete");
    let last = expected.last().expect("items").clone();
    let after_last = ArchiveQuery { cursor: ArchiveCursor::After(last), max: 10, ..ArchiveQuery::default() };
    let p = found(s.archive_query(owner, &after_last).await, "query");
    assert!(p.items.is_empty() && p.complete, "nothing after the last item");
    let first = expected[0].clone();
    let before_first = ArchiveQuery { cursor: ArchiveCursor::Before(first), max: 10, ..ArchiveQuery::default() };
    let p = found(s.archive_query(owner, &before_first).await, "query");
    assert!(p.items.is_empty() && p.complete, "nothing before the first item");
    let empty = found(
        s.archive_query("arch-paging-empty@conformance.example", &ArchiveQuery { max: 10, ..ArchiveQuery::default() })
            .await,
        "query",
    );
    assert!(empty.items.is_empty() && empty.complete && empty.count == 0, "an empty archive is one complete page");
}

pub async fn archive_query_filters<S: Store + ?Sized>(s: &S) {
    let owner = "arch-filter@conformance.example";
    let romeo = "romeo@conformance.example";
    let nurse = "nurse@conformance.example";
    let t = |n: i64| ARCHIVE_BASE_TS + n * 1_000_000;
    let mut items = vec![
        arch("f1", romeo, Direction::In, t(1), Some("one")),
        arch("f2", nurse, Direction::Out, t(2), Some("two")),
        arch("f3", romeo, Direction::Out, t(3), Some("three")),
        arch("f4", romeo, Direction::In, t(4), Some("four")),
        arch("f5", nurse, Direction::In, t(5), Some("five")),
        arch("f6", romeo, Direction::In, t(6), Some("six")),
    ];
    items[3].with_full = Some(format!("{romeo}/orchard"));
    items[5].with_full = Some(format!("{romeo}/balcony"));
    for it in &items {
        must(s.archive_append(owner, it, None).await, "archive_append");
    }
    must(
        s.archive_append("arch-filter-other@conformance.example", &arch("o1", romeo, Direction::In, t(3), None), None)
            .await,
        "archive_append",
    );
    let run = |q: ArchiveQuery| async move {
        let p = found(s.archive_query(owner, &ArchiveQuery { max: 100, ..q }).await, "archive_query");
        assert_eq!(p.count as usize, p.items.len(), "count matches the filtered set");
        page_ids(&p)
    };
    assert_eq!(run(ArchiveQuery::default()).await, ["f1", "f2", "f3", "f4", "f5", "f6"], "no filter: all, own only");
    assert_eq!(
        run(ArchiveQuery { with: Some(romeo.into()), ..ArchiveQuery::default() }).await,
        ["f1", "f3", "f4", "f6"],
        "with a bare JID: both directions, every resource"
    );
    assert_eq!(
        run(ArchiveQuery { with: Some(format!("{romeo}/orchard")), ..ArchiveQuery::default() }).await,
        ["f4"],
        "with a full JID: only that resource"
    );
    assert_eq!(
        run(ArchiveQuery { start: Some(t(2)), end: Some(t(4)), ..ArchiveQuery::default() }).await,
        ["f2", "f3", "f4"],
        "start and end are inclusive"
    );
    assert_eq!(
        run(ArchiveQuery { start: Some(t(2) + 1), end: Some(t(4) - 1), ..ArchiveQuery::default() }).await,
        ["f3"],
        "start and end bound to the microsecond"
    );
    assert_eq!(
        run(ArchiveQuery { after_id: Some("f2".into()), before_id: Some("f5".into()), ..ArchiveQuery::default() })
            .await,
        ["f3", "f4"],
        "after_id and before_id are exclusive"
    );
    assert_eq!(
        run(ArchiveQuery { with: Some(romeo.into()), after_id: Some("f2".into()), ..ArchiveQuery::default() }).await,
        ["f3", "f4", "f6"],
        "filters combine; after_id may name an item the other filters exclude"
    );
    assert_eq!(
        run(ArchiveQuery { ids: Some(vec!["f5".into(), "f1".into()]), ..ArchiveQuery::default() }).await,
        ["f1", "f5"],
        "ids: just those, in chronological order"
    );
    assert!(run(ArchiveQuery { with: Some("nobody@conformance.example".into()), ..ArchiveQuery::default() })
        .await
        .is_empty());

    // Cursor within a filter.
    let p = found(
        s.archive_query(
            owner,
            &ArchiveQuery {
                with: Some(romeo.into()),
                cursor: ArchiveCursor::After("f3".into()),
                max: 1,
                ..ArchiveQuery::default()
            },
        )
        .await,
        "archive_query",
    );
    assert_eq!(page_ids(&p), ["f4"]);
    assert_eq!(p.count, 4, "count ignores the cursor");
    assert!(!p.complete, "f6 is still to come");

    // Unknown ids (also ids of another owner's archive).
    for q in [
        ArchiveQuery { after_id: Some("nope".into()), ..ArchiveQuery::default() },
        ArchiveQuery { before_id: Some("o1".into()), ..ArchiveQuery::default() },
        ArchiveQuery { ids: Some(vec!["f1".into(), "nope".into()]), ..ArchiveQuery::default() },
        ArchiveQuery { cursor: ArchiveCursor::After("nope".into()), ..ArchiveQuery::default() },
        ArchiveQuery { cursor: ArchiveCursor::Before("o1".into()), ..ArchiveQuery::default() },
        ArchiveQuery {
            cursor: ArchiveCursor::After("nope".into()),
            text: Some("zzz".into()),
            ..ArchiveQuery::default()
        },
    ] {
        assert!(
            must(s.archive_query(owner, &ArchiveQuery { max: 10, ..q.clone() }).await, "archive_query").is_none(),
            "an id not in the archive must give None: {q:?}"
        );
    }
}

pub async fn archive_fulltext_search<S: Store + ?Sized>(s: &S) {
    let owner = "arch-fts@conformance.example";
    let peer = "peer@conformance.example";
    let other_peer = "other@conformance.example";
    let t = |n: i64| ARCHIVE_BASE_TS + n;
    let items = [
        arch("s1", peer, Direction::In, t(1), Some("Hello wonderful world")),
        arch("s2", peer, Direction::Out, t(2), Some("hello there")),
        arch("s3", other_peer, Direction::In, t(3), Some("Crème brûlée for dessert")),
        arch("s4", peer, Direction::In, t(4), Some("worldwide news")),
        arch("s5", other_peer, Direction::Out, t(5), Some("Don't panic, HELLO")),
        arch("s6", peer, Direction::In, t(6), None),
    ];
    for it in &items {
        must(s.archive_append(owner, it, None).await, "archive_append");
    }
    // Another owner's matching items are never found.
    must(
        s.archive_append(
            "arch-fts-other@conformance.example",
            &arch("x1", peer, Direction::In, t(1), Some("hello")),
            None,
        )
        .await,
        "archive_append",
    );
    assert_eq!(search(s, owner, "hello").await, ["s1", "s2", "s5"], "case-insensitive word match");
    assert_eq!(search(s, owner, "hello world").await, ["s1"], "all words must occur");
    assert_eq!(search(s, owner, "world").await, ["s1"], "whole words only");
    assert_eq!(search(s, owner, "world*").await, ["s1", "s4"], "trailing * is a prefix");
    assert_eq!(search(s, owner, "creme brulee").await, ["s3"], "diacritics-insensitive");
    assert_eq!(search(s, owner, "BRÛLÉE").await, ["s3"]);
    assert_eq!(search(s, owner, "\"hello there\"").await, ["s2"], "phrase");
    assert!(search(s, owner, "\"there hello\"").await.is_empty(), "phrase word order matters");
    assert_eq!(search(s, owner, "don't").await, ["s5"], "punctuation inside a word");
    assert!(search(s, owner, "missing").await.is_empty(), "absent word");
    assert!(search(s, owner, "hello OR panic").await.is_empty(), "no query syntax: OR is a word");
    assert!(search(s, owner, "!!! ... *").await.is_empty(), "no usable term matches nothing");
    for hostile in ["NEAR(hello world)", "\"", "hello\"", "-hello", "body:hello", "^hello", "(", "*hello", "hello AND"]
    {
        // Must not fail, whatever it finds.
        let q = ArchiveQuery { text: Some(hostile.into()), max: 10, ..ArchiveQuery::default() };
        must(s.archive_query(owner, &q).await, &format!("archive_query with text {hostile:?}"));
    }
    // Combined with other filters, and paged.
    let q = ArchiveQuery { text: Some("hello".into()), with: Some(peer.into()), max: 1, ..ArchiveQuery::default() };
    let p = found(s.archive_query(owner, &q).await, "archive_query");
    assert_eq!((page_ids(&p), p.count, p.complete), (vec!["s1".to_owned()], 2, false));
    let q = ArchiveQuery { cursor: ArchiveCursor::After("s1".into()), ..q };
    let p = found(s.archive_query(owner, &q).await, "archive_query");
    assert_eq!((page_ids(&p), p.complete), (vec!["s2".to_owned()], true));
    let q = ArchiveQuery { text: Some("hello".into()), cursor: ArchiveCursor::End, max: 2, ..ArchiveQuery::default() };
    let p = found(s.archive_query(owner, &q).await, "archive_query");
    assert_eq!((page_ids(&p), p.complete), (vec!["s2".to_owned(), "s5".to_owned()], false));
}

pub async fn archive_edit_and_retract<S: Store + ?Sized>(s: &S) {
    let owner = "arch-edit@conformance.example";
    let peer = "peer@conformance.example";
    for (i, id) in ["e1", "e2", "e3"].iter().enumerate() {
        let it = arch(id, peer, Direction::In, ARCHIVE_BASE_TS + i as i64, Some("original typo text"));
        must(s.archive_append(owner, &it, None).await, "archive_append");
    }
    assert!(
        must(s.archive_edit(owner, "e2", Some("corrected text"), b"<corrected/>").await, "archive_edit"),
        "edit of an existing item returns true"
    );
    let e2 = must(s.archive_get(owner, "e2").await, "archive_get").expect("edited item exists");
    assert_eq!(e2.body.as_deref(), Some("corrected text"));
    assert_eq!(e2.stanza, b"<corrected/>");
    assert_eq!(e2.timestamp, ARCHIVE_BASE_TS + 1, "an edit keeps the timestamp");
    assert_eq!(search(s, owner, "corrected").await, ["e2"], "the new text is searchable");
    assert_eq!(search(s, owner, "typo").await, ["e1", "e3"], "the old text is no longer found");
    assert!(
        must(s.archive_edit(owner, "e3", None, b"<no-text/>").await, "archive_edit"),
        "an edit may drop the searchable text"
    );
    assert_eq!(search(s, owner, "typo").await, ["e1"]);

    assert!(must(s.archive_retract(owner, "e1", b"<tombstone/>").await, "archive_retract"), "retract returns true");
    let e1 = must(s.archive_get(owner, "e1").await, "archive_get").expect("a tombstone stays in the archive");
    assert!(e1.retracted, "retracted flag set");
    assert_eq!(e1.body, None, "a tombstone has no searchable text");
    assert_eq!(e1.stanza, b"<tombstone/>");
    assert_eq!((e1.timestamp, e1.with.as_str()), (ARCHIVE_BASE_TS, peer), "id, time and peer stay");
    assert!(search(s, owner, "typo").await.is_empty(), "retracted text is not found");
    assert!(
        !must(s.archive_edit(owner, "e1", Some("resurrected"), b"<x/>").await, "archive_edit"),
        "a tombstone cannot be edited"
    );
    assert_eq!(must(s.archive_get(owner, "e1").await, "archive_get").map(|i| i.stanza), Some(b"<tombstone/>".to_vec()));
    assert!(search(s, owner, "resurrected").await.is_empty());
    assert!(
        must(s.archive_retract(owner, "e1", b"<tombstone2/>").await, "archive_retract"),
        "retracting again is harmless"
    );
    assert!(!must(s.archive_retract(owner, "nope", b"<t/>").await, "archive_retract"), "missing item");
    assert!(!must(s.archive_edit(owner, "nope", None, b"<t/>").await, "archive_edit"), "missing item");
    assert!(
        !must(s.archive_edit("arch-edit-other@conformance.example", "e2", None, b"<t/>").await, "archive_edit"),
        "another owner's item is not touched"
    );
    let all = found(s.archive_query(owner, &ArchiveQuery { max: 10, ..ArchiveQuery::default() }).await, "query");
    assert_eq!(page_ids(&all), ["e1", "e2", "e3"], "tombstones keep their place");
}

pub async fn archive_find_refs<S: Store + ?Sized>(s: &S) {
    let owner = "arch-refs@conformance.example";
    let romeo = "romeo@conformance.example";
    let nurse = "nurse@conformance.example";
    let mut a = arch("r1", romeo, Direction::In, ARCHIVE_BASE_TS + 1, Some("a"));
    a.message_id = Some("m-1".into());
    let mut b = arch("r2", romeo, Direction::In, ARCHIVE_BASE_TS + 2, Some("b"));
    b.origin_id = Some("m-1".into());
    b.message_id = Some("other".into());
    let mut c = arch("r3", romeo, Direction::In, ARCHIVE_BASE_TS + 3, Some("c"));
    c.replaces = Some("m-1".into());
    c.message_id = Some("m-3".into());
    let mut d = arch("r4", romeo, Direction::Out, ARCHIVE_BASE_TS + 4, Some("d"));
    d.message_id = Some("m-1".into());
    let mut e = arch("r5", nurse, Direction::In, ARCHIVE_BASE_TS + 5, Some("e"));
    e.message_id = Some("m-1".into());
    for it in [&c, &a, &b, &d, &e] {
        must(s.archive_append(owner, it, None).await, "archive_append");
    }
    let ids = |v: Vec<ArchiveItem>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(
        ids(must(s.archive_find_refs(owner, romeo, Direction::In, "m-1").await, "archive_find_refs")),
        ["r1", "r2", "r3"],
        "message id, origin-id and corrections of it, from that peer in that direction, oldest first"
    );
    assert_eq!(ids(must(s.archive_find_refs(owner, romeo, Direction::Out, "m-1").await, "find")), ["r4"]);
    assert_eq!(ids(must(s.archive_find_refs(owner, nurse, Direction::In, "m-1").await, "find")), ["r5"]);
    assert_eq!(ids(must(s.archive_find_refs(owner, romeo, Direction::In, "m-3").await, "find")), ["r3"]);
    assert!(must(s.archive_find_refs(owner, romeo, Direction::In, "none").await, "find").is_empty());
    assert!(must(
        s.archive_find_refs("arch-refs-other@conformance.example", romeo, Direction::In, "m-1").await,
        "find"
    )
    .is_empty());
}

pub async fn archive_delete_all_and_retention<S: Store + ?Sized>(s: &S) {
    let a = "arch-del-a@conformance.example";
    let b = "arch-del-b@conformance.example";
    let peer = "peer@conformance.example";
    for owner in [a, b] {
        for i in 0..5i64 {
            let it = arch(&format!("d{i}"), peer, Direction::In, ARCHIVE_BASE_TS + i, Some("delete me"));
            must(s.archive_append(owner, &it, None).await, "archive_append");
        }
    }
    assert_eq!(must(s.archive_delete_all(a).await, "archive_delete_all"), 5, "returns how many went");
    let q = ArchiveQuery { max: 10, ..ArchiveQuery::default() };
    assert_eq!(found(s.archive_query(a, &q).await, "query").count, 0, "archive emptied");
    assert!(search(s, a, "delete").await.is_empty(), "and its search index");
    assert_eq!(found(s.archive_query(b, &q).await, "query").count, 5, "other owner untouched");
    assert_eq!(search(s, b, "delete").await.len(), 5);
    assert_eq!(must(s.archive_delete_all(a).await, "archive_delete_all"), 0);

    // Retention, below ARCHIVE_BASE_TS so other checks' items are safe.
    let old = |n: i64| 1_000_000 + n;
    for owner in [a, b] {
        for i in 0..4i64 {
            let it = arch(&format!("old{i}"), peer, Direction::Out, old(i), Some("ancient words"));
            must(s.archive_append(owner, &it, None).await, "archive_append");
        }
    }
    assert_eq!(
        must(s.archive_delete_before(old(2)).await, "archive_delete_before"),
        4,
        "two items of each owner are older than the cut (exclusive)"
    );
    let left = found(s.archive_query(a, &q).await, "query");
    assert_eq!(page_ids(&left), ["old2", "old3"], "the oldest went, the rest stay");
    let left = found(s.archive_query(b, &q).await, "query");
    assert_eq!(page_ids(&left), ["old2", "old3", "d0", "d1", "d2", "d3", "d4"]);
    assert_eq!(search(s, b, "ancient").await, ["old2", "old3"], "the index follows");
    assert_eq!(must(s.archive_delete_before(old(2)).await, "archive_delete_before"), 0, "nothing more to do");
}

pub async fn delete_account_removes_archive<S: Store + ?Sized>(s: &S) {
    let u = "arch-account@conformance.example";
    let keep = "arch-account-keep@conformance.example";
    let peer = "peer@conformance.example";
    for owner in [u, keep] {
        must(s.create_account(owner, &creds(40)).await, "create_account");
        for i in 0..3i64 {
            let it = arch(&format!("a{i}"), peer, Direction::In, ARCHIVE_BASE_TS + i, Some("private words"));
            must(s.archive_append(owner, &it, Some(&format!("k{i}"))).await, "archive_append");
        }
    }
    assert!(must(s.delete_account(u).await, "delete_account"), "delete returns true");
    let q = ArchiveQuery { max: 10, ..ArchiveQuery::default() };
    assert_eq!(found(s.archive_query(u, &q).await, "query").count, 0, "archive gone with the account");
    assert!(search(s, u, "private").await.is_empty(), "search index gone with the account");
    assert!(must(s.archive_get(u, "a0").await, "archive_get").is_none());
    assert_eq!(found(s.archive_query(keep, &q).await, "query").count, 3, "other account's archive untouched");
    assert_eq!(search(s, keep, "private").await.len(), 3);
    // Nothing is left behind: the dedupe keys are free again.
    let it = arch("a0", peer, Direction::In, ARCHIVE_BASE_TS, Some("fresh"));
    assert!(must(s.archive_append(u, &it, Some("k0")).await, "archive_append"), "a re-created archive starts empty");
}
