//! A lease with a checkpointed remaining TTL (as `rusd-import` writes etcd's `remainingTTL`)
//! through the server: it resumes from the checkpoint, a keep-alive clears the checkpoint
//! through the raft log, and a restart then resumes it from its full TTL.

mod common;

use mvcc_core::{AnyBackend, MvccStore};
use storage_api::{BackendConfig, BackendKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_lease_resumes_from_it_until_a_keep_alive_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an import of an etcd lease granted 600 s with 42 s left writes.
        let store = MvccStore::new(
            AnyBackend::open(
                BackendKind::Sled,
                BackendConfig::new(dir.path().join("member")),
            )
            .unwrap(),
        )
        .unwrap();
        store.lease_grant(7, 600).unwrap();
        store.put(b"k", b"v", 7).unwrap();
        store.lease_checkpoint(7, 42).unwrap();
        store.close().unwrap();
    }
    let server = common::start(BackendKind::Sled, dir.path(), |c| c).await;
    let mut c = common::connect(&server).await;
    let t = c.lease_time_to_live(7, None).await.unwrap();
    // The real clock runs: at most the 42 s checkpointed, and well above 0.
    assert_eq!(t.granted_ttl(), 600);
    assert!((30..=42).contains(&t.ttl()), "ttl {}", t.ttl());

    let (mut keeper, mut stream) = c.lease_keep_alive(7).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = stream.message().await.unwrap().unwrap();
    assert_eq!((r.id(), r.ttl()), (7, 600));
    drop((keeper, stream));
    let t = c.lease_time_to_live(7, None).await.unwrap();
    assert!(t.ttl() > 580, "ttl {}", t.ttl());
    server.shutdown().await.unwrap();

    // The keep-alive cleared the checkpoint in the store: a restart resumes from 600 s.
    let server = common::start(BackendKind::Sled, dir.path(), |c| c).await;
    let mut c = common::connect(&server).await;
    let t = c.lease_time_to_live(7, None).await.unwrap();
    assert_eq!(t.granted_ttl(), 600);
    assert!(t.ttl() > 580, "ttl {}", t.ttl());
    assert_eq!(
        server_store_checkpoint(&server),
        0,
        "no checkpoint left after the keep-alive"
    );
    server.shutdown().await.unwrap();
}

fn server_store_checkpoint(server: &rusd_server::RunningServer) -> i64 {
    server.store().lease_checkpointed_ttl(7).unwrap()
}
