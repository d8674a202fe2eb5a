//! The contract every `MetaStore` keeps, as one check that runs against each implementation:
//! the embedded store in its unit tests, etcd in the integration tests over a real etcd.

use crate::MetaStore;

/// Exercises compare-and-swap, listing and counters on an empty store; panics on a breach.
/// Leaves the counter `ids/queue` at 2.
pub async fn check(store: &dyn MetaStore) {
    let rev = store
        .create("queues/a", b"1".to_vec())
        .await
        .unwrap()
        .expect("creating a new key succeeds");
    assert_eq!(
        store.create("queues/a", b"2".to_vec()).await.unwrap(),
        None,
        "creating an existing key fails"
    );
    store
        .create("queues/b", b"x".to_vec())
        .await
        .unwrap()
        .unwrap();
    store
        .create("other/c", b"x".to_vec())
        .await
        .unwrap()
        .unwrap();
    // A key that sorts right after the prefix must not leak into its listing.
    store
        .create("queues0", b"x".to_vec())
        .await
        .unwrap()
        .unwrap();

    let new_rev = store
        .update("queues/a", b"3".to_vec(), rev)
        .await
        .unwrap()
        .expect("update at the current revision succeeds");
    assert!(new_rev > rev);
    assert_eq!(
        store.update("queues/a", b"4".to_vec(), rev).await.unwrap(),
        None,
        "update at a stale revision fails"
    );
    assert_eq!(
        store
            .update("queues/none", b"4".to_vec(), rev)
            .await
            .unwrap(),
        None,
        "update of a missing key fails"
    );
    let a = store.get("queues/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.revision), (b"3".as_slice(), new_rev));
    assert_eq!(store.get("queues/none").await.unwrap(), None);

    let all = store.list("queues/", "", 10).await.unwrap();
    let names: Vec<_> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["queues/a", "queues/b"]);
    let after = store.list("queues/", "queues/a", 10).await.unwrap();
    let names: Vec<_> = after.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["queues/b"]);
    assert_eq!(store.list("queues/", "", 1).await.unwrap().len(), 1);

    assert!(
        !store.delete("queues/a", rev).await.unwrap(),
        "stale delete"
    );
    assert!(store.delete("queues/a", new_rev).await.unwrap());
    assert_eq!(store.get("queues/a").await.unwrap(), None);
    assert!(
        !store.delete("queues/a", new_rev).await.unwrap(),
        "already gone"
    );

    assert_eq!(store.next_ids("ids/queue", 1).await.unwrap(), 1);
    assert_eq!(store.next_ids("ids/queue", 1).await.unwrap(), 2);
    // A block: 3 to 12 are the caller's, and the next value comes after them.
    assert_eq!(store.next_ids("ids/queue", 10).await.unwrap(), 3);
    assert_eq!(store.next_ids("ids/queue", 1).await.unwrap(), 13);
}
