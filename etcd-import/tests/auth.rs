//! etcd's auth state (users, roles, permissions, the enabled flag, the auth revision) through
//! `import` and `export`: a real etcd 3.4 with auth enabled, imported into sled and redb and
//! checked with `rusd_auth::AuthStore`, exported again (the auth buckets byte-identical to
//! etcd's), restored with `etcdctl snapshot restore` and served by etcd with auth enforced; and
//! malformed auth records refused with typed errors before anything is written.

mod common;

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Output};

use common::{etcd_available, Etcd};
use etcd_import::bbolt::BoltFile;
use etcd_import::bbolt_write::BoltWriter;
use etcd_import::{export, import, parse_etcd_db, read_etcd, AuthFigures, ImportError};
use mvcc_core::request::{Put, Range};
use mvcc_core::AnyBackend;
use rusd_auth::{
    AuthConfig, AuthDump, AuthError, AuthStore, Permission, PermissionType, Role, User, UserOptions,
};
use storage_api::{Backend, BackendConfig, BackendKind};

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

fn ctl_at(endpoint: &str, args: &[&str]) -> Output {
    Command::new(common::ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("etcdctl")
}

/// Runs etcdctl, asserting success; returns stdout.
fn ok(endpoint: &str, args: &[&str]) -> String {
    let out = ctl_at(endpoint, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Runs etcdctl, asserting failure; returns stderr.
fn fails(endpoint: &str, args: &[&str]) -> String {
    let out = ctl_at(endpoint, args);
    assert!(!out.status.success(), "etcdctl {args:?} succeeded");
    String::from_utf8(out.stderr).expect("utf8")
}

/// The state etcd holds after the fixture's commands, with the bcrypt hashes it wrote.
fn expected(alice_hash: &str, root_hash: &str) -> AuthDump {
    let user = |name: &str, hash: &str, role: &str| User {
        name: name.into(),
        password_hash: Some(hash.into()),
        roles: vec![role.into()],
        options: UserOptions { no_password: false },
    };
    AuthDump {
        enabled: true,
        // user add root (2), role add app (3), two grants (4, 5), user add alice (6), grant
        // (7), then `auth enable`: role add root (8), grant root root (9); enabling itself
        // does not count.
        revision: 9,
        users: vec![
            user("alice", alice_hash, "app"),
            user("root", root_hash, "root"),
        ],
        roles: vec![
            Role {
                name: "app".into(),
                permissions: vec![
                    Permission::new(PermissionType::ReadWrite, "app/", "app0"),
                    Permission::new(PermissionType::Read, "cfg", ""),
                ],
            },
            Role {
                name: "root".into(),
                permissions: vec![],
            },
        ],
    }
}

/// The entries of an auth bucket, owned.
fn bucket(bytes: &[u8], name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let f = BoltFile::open(&bytes[..bytes.len() - bytes.len() % 4096]).expect("bbolt");
    f.bucket(name)
        .expect("bucket")
        .expect("present")
        .iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect()
}

fn open_auth(dir: &Path, kind: BackendKind) -> AuthStore<AnyBackend> {
    let be = AnyBackend::open(kind, BackendConfig::new(dir)).expect("open");
    AuthStore::open(be, AuthConfig::default()).expect("auth store")
}

fn check_store(store: &AuthStore<AnyBackend>, want: &AuthDump, what: &str) {
    assert_eq!(&store.dump(), want, "{what}");
    assert!(store.is_enabled(), "{what}");
    assert_eq!(store.revision(), 9, "{what}");
    assert_eq!(store.user_list(), ["alice", "root"], "{what}");
    assert_eq!(store.user_get("alice").expect("alice").roles, ["app"]);
    assert_eq!(store.user_get("root").expect("root").roles, ["root"]);
    assert_eq!(store.role_list(), ["app", "root"], "{what}");
    assert_eq!(
        store.role_get("app").expect("app").permissions,
        [
            Permission::new(PermissionType::ReadWrite, "app/", "app0"),
            Permission::new(PermissionType::Read, "cfg", ""),
        ]
    );
    // etcd's bcrypt hashes, kept as they are: the same passwords authenticate.
    assert_eq!(store.check_password("alice", "alicepw").expect("alice"), 9);
    assert_eq!(store.check_password("root", "rootpw").expect("root"), 9);
    assert!(matches!(
        store.check_password("alice", "rootpw"),
        Err(AuthError::AuthFailed)
    ));
    assert!(matches!(
        store.check_password("root", "wrong"),
        Err(AuthError::AuthFailed)
    ));
    // The permissions are enforced.
    let token = store.authenticate("alice", "alicepw").expect("token");
    let alice = store
        .user_from_token(&token)
        .expect("info")
        .expect("enabled");
    store
        .check_put(&alice, &Put::new("app/x", "1", 0))
        .expect("readwrite on app/");
    store
        .check_range(&alice, &Range::new("cfg", ""))
        .expect("read on cfg");
    assert!(matches!(
        store.check_put(&alice, &Put::new("cfg", "1", 0)),
        Err(AuthError::PermissionDenied)
    ));
    assert!(matches!(
        store.check_range(&alice, &Range::new("other", "")),
        Err(AuthError::PermissionDenied)
    ));
}

#[test]
fn etcd_auth_state_imports_exports_and_is_enforced_by_etcd() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("etcd");
    let snapshot = dir.path().join("etcd.snap");
    {
        let etcd = Etcd::start(&data_dir);
        let e = etcd.endpoint.clone();
        ok(&e, &["user", "add", ROOT]);
        ok(&e, &["role", "add", "app"]);
        ok(
            &e,
            &[
                "role",
                "grant-permission",
                "app",
                "--prefix=true",
                "readwrite",
                "app/",
            ],
        );
        ok(&e, &["role", "grant-permission", "app", "read", "cfg"]);
        ok(&e, &["user", "add", ALICE]);
        ok(&e, &["user", "grant-role", "alice", "app"]);
        ok(&e, &["put", "cfg", "c"]);
        ok(&e, &["auth", "enable"]);
        let user = format!("--user={ROOT}");
        ok(
            &e,
            &[&user, "snapshot", "save", &snapshot.display().to_string()],
        );
        etcd.stop();
    }
    let etcd_db = std::fs::read(data_dir.join("member/snap/db")).expect("read db");

    // What etcd stored, decoded.
    let from_dir = read_etcd(&data_dir).expect("parse").auth.expect("auth");
    let hash = |name: &str| {
        from_dir
            .users
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| u.password_hash.clone())
            .expect("hash")
    };
    let want = expected(&hash("alice"), &hash("root"));
    assert_eq!(from_dir, want);
    assert!(want.users[0]
        .password_hash
        .as_deref()
        .is_some_and(|h| h.starts_with("$2a$10$")));
    assert_eq!(
        read_etcd(&snapshot).expect("parse").auth,
        Some(want.clone())
    );

    let figures = AuthFigures {
        enabled: true,
        revision: 9,
        users: 2,
        roles: 2,
    };
    for (src, kind) in [
        (&data_dir, BackendKind::Sled),
        (&snapshot, BackendKind::Redb),
    ] {
        let target = dir.path().join(format!("rusd-{kind}"));
        let s = import(src, &target, kind).expect("import");
        assert_eq!(s.auth, Some(figures), "{kind}");
        let store = open_auth(&target, kind);
        check_store(&store, &want, &format!("import into {kind}"));
        store.backend().close().expect("close");
    }

    // rusd's own snapshot carries the auth tree.
    let rusd_snap = dir.path().join("rusd.snap");
    etcd_import::snapshot::save(&dir.path().join("rusd-sled"), &rusd_snap, None).expect("save");
    let restored = dir.path().join("rusd-restored");
    etcd_import::snapshot::restore(&rusd_snap, &restored, BackendKind::Redb).expect("restore");
    let store = open_auth(&restored, BackendKind::Redb);
    check_store(&store, &want, "rusd snapshot restore");
    store.backend().close().expect("close");

    // Export: the auth buckets are byte-identical to etcd's.
    let exported = dir.path().join("export.snap");
    let s = export(&dir.path().join("rusd-redb"), &exported, None, true).expect("export");
    assert_eq!(s.auth, Some(figures));
    let bytes = std::fs::read(&exported).expect("read");
    for name in [&b"auth"[..], b"authUsers", b"authRoles"] {
        assert_eq!(
            bucket(&bytes, name),
            bucket(&etcd_db, name),
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(parse_etcd_db(&bytes).expect("parse").auth, Some(want));

    // etcd restores the export and enforces its auth.
    let restored = dir.path().join("etcd-restored");
    let peer = common::free_port();
    let out = Command::new(common::ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", &exported.display().to_string()])
        .arg(format!("--data-dir={}", restored.display()))
        .args(["--name=imp"])
        .arg(format!("--initial-cluster=imp=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = Etcd::start_as(&restored, peer, Some(ROOT));
    let e = etcd.endpoint.clone();
    let alice = format!("--user={ALICE}");
    let root = format!("--user={ROOT}");
    assert_eq!(ok(&e, &[&alice, "get", "cfg", "--print-value-only"]), "c\n");
    assert_eq!(ok(&e, &[&alice, "put", "app/x", "1"]), "OK\n");
    assert!(
        fails(&e, &[&alice, "put", "other", "1"]).contains("etcdserver: permission denied"),
        "denied put"
    );
    assert!(
        fails(&e, &["--user=alice:wrong", "get", "cfg"])
            .contains("etcdserver: authentication failed, invalid user ID or password"),
        "wrong password"
    );
    assert!(
        fails(&e, &["get", "cfg"]).contains("etcdserver: user name is empty"),
        "auth is enabled"
    );
    assert_eq!(
        ok(&e, &[&root, "user", "get", "alice"]),
        "User: alice\nRoles: app\n"
    );
    assert_eq!(
        ok(&e, &[&root, "role", "get", "app"]),
        "Role app\nKV Read:\n\t[app/, app0) (prefix app/)\n\tcfg\nKV Write:\n\t[app/, app0) (prefix app/)\n"
    );
    etcd.stop();
}

/// A bucket's name and pairs.
type Bucket<'a> = (&'a [u8], Vec<(&'a [u8], Vec<u8>)>);

/// A minimal etcd file: empty `key` and `meta` buckets plus the given auth buckets.
fn etcd_file(auth: &[Bucket<'_>]) -> Vec<u8> {
    let mut w = BoltWriter::new(Cursor::new(Vec::new()), 4096, "mem").expect("writer");
    w.bucket(b"key").finish().expect("key");
    w.bucket(b"meta").finish().expect("meta");
    for (name, pairs) in auth {
        let mut b = w.bucket(name);
        for (k, v) in pairs {
            b.put(k, v).expect("put");
        }
        b.finish().expect("finish");
    }
    w.finish(1).expect("finish").into_inner()
}

#[test]
fn malformed_auth_records_are_typed_errors_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good_user = etcd_import::auth::encode_user(&User {
        name: "alice".into(),
        password_hash: Some("$2a$04$x".into()),
        roles: vec!["app".into()],
        options: UserOptions::default(),
    });
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbled user",
            etcd_file(&[(b"authUsers", vec![(b"alice", vec![0x0a, 0x05, b'a', b'l'])])]),
            "bad row in etcd bucket \"authUsers\" at key 616c696365: \
             length-delimited field runs past the value",
        ),
        (
            "user under another name",
            etcd_file(&[(b"authUsers", vec![(b"bob", good_user.clone())])]),
            "bad row in etcd bucket \"authUsers\" at key 626f62: \
             record of user \"alice\" under this key",
        ),
        (
            "unknown permission type",
            etcd_file(&[(
                b"authRoles",
                vec![(b"r", vec![0x0a, 1, b'r', 0x12, 2, 0x08, 7])],
            )]),
            "bad row in etcd bucket \"authRoles\" at key 72: unknown permission type 7",
        ),
        (
            "short revision",
            etcd_file(&[(b"auth", vec![(b"authRevision", vec![0, 9])])]),
            "bad row in etcd bucket \"auth\" at key 617574685265766973696f6e: not 8 bytes",
        ),
        (
            "bad flag",
            etcd_file(&[(b"auth", vec![(b"authEnabled", vec![2])])]),
            "bad row in etcd bucket \"auth\" at key 61757468456e61626c6564: flag of 1 bytes",
        ),
    ];
    for (what, bytes, want) in cases {
        let src = dir.path().join(format!("{what}.db"));
        std::fs::write(&src, &bytes).expect("write");
        let err = parse_etcd_db(&bytes).expect_err(what);
        assert!(matches!(err, ImportError::BadRow { .. }), "{what}: {err:?}");
        assert_eq!(err.to_string(), want, "{what}");
        let target = dir.path().join(format!("{what}-target"));
        let err = import(&src, &target, BackendKind::Sled).expect_err(what);
        assert_eq!(err.to_string(), want, "{what}");
        assert!(!target.exists(), "{what}: the target was created");
    }

    // A record that decodes but breaks rusd-auth's invariants (a range end below its key).
    let bytes = etcd_file(&[(
        b"authRoles",
        vec![(
            b"r",
            vec![0x0a, 1, b'r', 0x12, 6, 0x12, 1, b'b', 0x1a, 1, b'a'],
        )],
    )]);
    let src = dir.path().join("range.db");
    std::fs::write(&src, &bytes).expect("write");
    let target = dir.path().join("range-target");
    for err in [
        parse_etcd_db(&bytes).expect_err("range"),
        import(&src, &target, BackendKind::Sled).expect_err("range"),
    ] {
        match err {
            ImportError::Auth(AuthError::InvalidDump(r)) => {
                assert_eq!(r, "role \"r\": invalid permission range \"b\"..\"a\"")
            }
            e => panic!("{e:?}"),
        }
    }
    assert!(!target.exists());

    // The well-formed record imports; a file without auth buckets imports nothing.
    let src = dir.path().join("good.db");
    std::fs::write(
        &src,
        etcd_file(&[(b"authUsers", vec![(b"alice", good_user)])]),
    )
    .expect("write");
    let target = dir.path().join("good");
    let s = import(&src, &target, BackendKind::Sled).expect("import");
    assert_eq!(
        s.auth,
        Some(AuthFigures {
            enabled: false,
            revision: 1,
            users: 1,
            roles: 0,
        })
    );
    let store = open_auth(&target, BackendKind::Sled);
    assert_eq!(store.user_get("alice").expect("alice").roles, ["app"]);
    store.backend().close().expect("close");
    // The command line reports what was carried, both ways.
    let bin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rusd-import"))
            .args(args)
            .output()
            .expect("rusd-import");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let d = |name: &str| dir.path().join(name).display().to_string();
    let out = bin(&[
        "import",
        "--etcd-db",
        &d("good.db"),
        "--data-dir",
        &d("cli"),
    ]);
    assert_eq!(
        out,
        format!(
            "imported {} (data file) into {} [sled]: 0 rows, 0 live keys, 0 leases, revision 1, \
             compacted at -1\nimported auth disabled, revision 1, 1 users, 0 roles\n",
            d("good.db"),
            d("cli")
        )
    );
    let out = bin(&["export", "--data-dir", &d("cli"), "--etcd-db", &d("cli.db")]);
    assert!(
        out.contains("\nexported auth disabled, revision 1, 1 users, 0 roles\n"),
        "{out}"
    );

    let src = dir.path().join("none.db");
    std::fs::write(&src, etcd_file(&[])).expect("write");
    assert_eq!(parse_etcd_db(&etcd_file(&[])).expect("parse").auth, None);
    let target = dir.path().join("none");
    assert_eq!(
        import(&src, &target, BackendKind::Sled)
            .expect("import")
            .auth,
        None
    );
    let be = AnyBackend::open(BackendKind::Sled, BackendConfig::new(&target)).expect("open");
    assert_eq!(
        be.scan(storage_api::Tree::Auth, b"", b"", 0).expect("scan"),
        Vec::new()
    );
    be.close().expect("close");
}
