//! The `rusd-import` binary.

mod common;

use std::process::Command;

#[test]
fn cli_imports_and_reports_typed_errors() {
    if !common::etcd_available() {
        return;
    }
    let fx = common::build_fixture();
    let bin = env!("CARGO_BIN_EXE_rusd-import");
    let target = fx.dir.path().join("cli-redb");
    let out = Command::new(bin)
        .arg("--etcd-db")
        .arg(&fx.snapshot)
        .arg("--data-dir")
        .arg(&target)
        .args(["--backend", "redb"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        line.ends_with("[redb]: 31 rows, 6 live keys, 2 leases, revision 27, compacted at 9\n"),
        "{line}"
    );
    assert!(line.contains("(snapshot)"), "{line}");

    // Same target again: refused, exit code 1, nothing changed.
    let out = Command::new(bin)
        .arg("--etcd-db")
        .arg(&fx.data_dir)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "rusd-import: target directory {} is not empty\n",
            target.display()
        )
    );

    // A data directory (default engine sled).
    let target = fx.dir.path().join("cli-sled");
    let out = Command::new(bin)
        .arg("--etcd-db")
        .arg(&fx.data_dir)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(data file)"));

    // An empty source.
    let empty = fx.dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("write");
    let target = fx.dir.path().join("cli-empty");
    let out = Command::new(bin)
        .arg("--etcd-db")
        .arg(&empty)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "rusd-import: the file is empty\n"
    );
    assert!(!target.exists());
}
