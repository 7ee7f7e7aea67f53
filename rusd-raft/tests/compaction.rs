//! A compaction entry does not hold up the entries after it: the state machine puts the
//! compaction in force and leaves the deletion of its rows to the store's compaction thread.

use std::collections::BTreeMap;
use std::time::Duration;

use mvcc_core::{AnyBackend, Compaction, Put, StoreConfig};
use rusd_raft::{Command, CommandResponse, InitialState, Member, RaftNode, RaftNodeConfig};
use storage_api::{Backend, BackendConfig, BackendKind, Durability, Tree};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_applied_while_a_compaction_deletes_its_rows() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m1");
        let backend = AnyBackend::open(
            BackendKind::Sled,
            BackendConfig::new(dir.join("db")).with_durability(Durability::Buffered {
                interval: Duration::from_millis(100),
            }),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let member = Member {
            name: "m1".to_string(),
            peer_urls: vec![format!("http://{}", listener.local_addr().unwrap())],
            client_urls: Vec::new(),
        };
        let mut config = RaftNodeConfig::new(1, "m1".to_string(), listener, &dir, backend);
        config.initial_members = BTreeMap::from([(1, member)]);
        config.initial_state = InitialState::New;
        config.request_timeout = Duration::from_secs(20);
        // One row per deletion batch and a pause after each: deleting 100 rows takes ~5 s.
        config.store_config = StoreConfig::default()
            .with_compaction_batch_limit(1)
            .with_compaction_sleep_interval(Duration::from_millis(50));
        let node: RaftNode<AnyBackend> = RaftNode::start(config).await.unwrap();
        for i in 0..100 {
            node.write(Command::Put(Put::new("k", format!("{i}"), 0)))
                .await
                .unwrap();
        }
        let store = node.store();
        assert_eq!(store.current_revision(), 101);

        let res = node
            .write(Command::Compaction(Compaction {
                revision: 101,
                physical: true,
            }))
            .await
            .unwrap();
        assert!(matches!(res, CommandResponse::Compaction(c) if c.revision == 101));
        // The next write is applied (and answered) while the rows are still being deleted:
        // before, the compaction entry held the apply until its last row was gone.
        match node
            .write(Command::Put(Put::new("k", "after", 0)))
            .await
            .unwrap()
        {
            CommandResponse::Put(p) => assert_eq!(p.revision, 102),
            other => panic!("{other:?}"),
        }
        assert!(!store.wait_compacted(101, Duration::ZERO).unwrap());
        assert!(matches!(
            store.range(b"k", b"", 100, 0, false),
            Err(mvcc_core::MvccError::Compacted)
        ));

        assert!(store.wait_compacted(101, Duration::from_secs(60)).unwrap());
        let rows = store.backend().scan(Tree::Kv, &[], &[], 0).unwrap();
        assert_eq!(rows.len(), 2); // revisions 101 and 102
        node.shutdown().await.unwrap();
    })
    .await
    .expect("test took longer than 120 s");
}
