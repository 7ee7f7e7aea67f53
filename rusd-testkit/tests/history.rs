//! The shared recorder: timestamps, statuses, export to the checker, JSON dump.

use std::sync::Barrier;

use rusd_testkit::history::{load_json, to_operations, History, Record, Status};
use rusd_testkit::linearizability::{
    check, Budget, CheckResult, Operation, Register, RegisterInput, RegisterOutput,
};

type Hist = History<RegisterInput<u64>, RegisterOutput<u64>>;

#[test]
fn timestamps_follow_real_time_and_statuses_map_to_the_checker() {
    let h: Hist = History::new();
    assert!(h.is_empty());
    let w = h.invoke(1, RegisterInput::Write(5));
    assert_eq!(w.id(), 0);
    w.ok(RegisterOutput::Written);
    h.invoke(2, RegisterInput::Write(6)).fail();
    h.invoke(3, RegisterInput::Write(7)).info();
    drop(h.invoke(4, RegisterInput::Write(8))); // dropped uncompleted: info
    let pending = h.invoke(5, RegisterInput::Read);
    assert_eq!(h.len(), 5);

    let records = h.records();
    assert_eq!(records[0].call, 1);
    assert!(matches!(records[0].status, Status::Ok { ret: 2, .. }));
    assert!(matches!(records[1].status, Status::Fail { ret: 4, .. }));
    assert!(matches!(records[2].status, Status::Info { ret: 6, .. }));
    assert!(matches!(records[3].status, Status::Info { ret: 8, .. }));
    assert_eq!(records[4].status, Status::Pending);
    assert!(records
        .windows(2)
        .all(|w| w[0].call_nanos <= w[1].call_nanos));

    assert_eq!(
        h.operations(),
        vec![
            Operation::ok(1, RegisterInput::Write(5), 1, 2, RegisterOutput::Written),
            Operation::info(3, RegisterInput::Write(7), 5),
            Operation::info(4, RegisterInput::Write(8), 7),
            Operation::info(5, RegisterInput::Read, 9),
        ]
    );
    pending.ok(RegisterOutput::Read(Some(5)));
    assert_eq!(
        h.operations()[3],
        Operation::ok(5, RegisterInput::Read, 9, 10, RegisterOutput::Read(Some(5)))
    );
}

#[test]
fn concurrent_clients_get_unique_increasing_timestamps() {
    let h: Hist = History::new();
    let threads = 8u64;
    let per = 100u64;
    let barrier = Barrier::new(threads as usize);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (h, barrier) = (h.clone(), &barrier);
            s.spawn(move || {
                barrier.wait();
                for i in 0..per {
                    h.invoke(t, RegisterInput::Write(t * 1000 + i))
                        .ok(RegisterOutput::Written);
                }
            });
        }
    });
    let ops = h.operations();
    assert_eq!(ops.len(), (threads * per) as usize);
    let mut stamps: Vec<u64> = ops
        .iter()
        .flat_map(|op| [op.call, op.ret().expect("ok")])
        .collect();
    stamps.sort_unstable();
    assert_eq!(stamps, (1..=2 * threads * per).collect::<Vec<_>>());
    // Each client's operations are sequential in the recorded order.
    for t in 0..threads {
        let mine: Vec<&Operation<_, _>> = ops.iter().filter(|op| op.client == t).collect();
        assert!(mine.windows(2).all(|w| w[0].ret().expect("ok") < w[1].call));
    }
}

#[test]
fn json_dump_on_failure_only() {
    let h: Hist = History::new();
    h.invoke(1, RegisterInput::Write(1))
        .ok(RegisterOutput::Written);
    h.invoke(2, RegisterInput::Read)
        .ok(RegisterOutput::Read(Some(2)));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.json");

    let verdict = check(
        &Register { initial: None },
        &h.operations(),
        Budget::default(),
    )
    .expect("valid");
    assert!(verdict.is_violation());
    assert!(h.dump_json_on_failure(&verdict, &path).expect("dump"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    assert!(json["verdict"]
        .as_str()
        .expect("verdict")
        .starts_with("NotLinearizable"));
    let records = json["records"].as_array().expect("records");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["input"], serde_json::json!("Read"));
    assert_eq!(
        records[1]["status"]["Ok"]["output"],
        serde_json::json!({"Read": 2})
    );

    // The dump loads back to the same records and the same verdict.
    let loaded: Vec<Record<RegisterInput<u64>, RegisterOutput<u64>>> =
        load_json(&path).expect("load");
    assert_eq!(loaded, h.records());
    assert_eq!(
        check(
            &Register { initial: None },
            &to_operations(&loaded),
            Budget::default()
        )
        .expect("valid"),
        verdict
    );

    let other = dir.path().join("ok.json");
    assert!(!h
        .dump_json_on_failure(&CheckResult::Linearizable, &other)
        .expect("no dump"));
    assert!(!other.exists());
    h.dump_json(&other).expect("dump");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other).expect("read")).expect("json");
    assert_eq!(json["verdict"], serde_json::Value::Null);
}
