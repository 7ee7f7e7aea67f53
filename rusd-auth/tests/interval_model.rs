//! The permission check against a brute-force model: over a small closed universe of keys,
//! a grant set allows a request exactly when every key of the request is inside some grant.
//!
//! Universe: every string of length <= 2 over {0x00, 'a', 'b'}. Point grants and point
//! requests use keys of length <= 1, so every interval end (`k\0` of a point, a range end, +inf)
//! is itself in the universe or infinite; then an uncovered stretch of a request always starts
//! at a universe key, and the brute force is exact.

mod common;

use common::*;
use mvcc_core::request::Range;
use proptest::prelude::*;
use rusd_auth::*;
use storage_api::{Backend, BackendConfig, MemoryBackend};

const ALPHABET: [u8; 3] = [0, b'a', b'b'];

fn universe() -> Vec<Vec<u8>> {
    let mut u = Vec::new();
    for &a in &ALPHABET {
        u.push(vec![a]);
        for &b in &ALPHABET {
            u.push(vec![a, b]);
        }
    }
    u.sort();
    u
}

/// A grant or a request in etcd's form.
#[derive(Debug, Clone)]
enum Shape {
    Point(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
    From(Vec<u8>),
}

impl Shape {
    fn etcd(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Shape::Point(k) => (k.clone(), Vec::new()),
            Shape::Range(k, e) => (k.clone(), e.clone()),
            Shape::From(k) => (k.clone(), vec![0]),
        }
    }

    fn contains(&self, x: &[u8]) -> bool {
        match self {
            Shape::Point(k) => x == k.as_slice(),
            Shape::Range(k, e) => k.as_slice() <= x && x < e.as_slice(),
            Shape::From(k) => k.as_slice() <= x,
        }
    }
}

fn short_key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(ALPHABET.to_vec()).prop_map(|b| vec![b])
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(universe())
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        short_key().prop_map(Shape::Point),
        (key(), key())
            .prop_filter("key < range_end", |(a, b)| a < b)
            .prop_map(|(a, b)| Shape::Range(a, b)),
        key().prop_map(Shape::From),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn check_matches_brute_force(grants in prop::collection::vec(shape(), 0..5), req in shape()) {
        let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
        let store = AuthStore::open(be, AuthConfig { bcrypt_cost: COST, ..AuthConfig::default() }).unwrap();
        let mut cmds = vec![role_add("r"), AuthCommand::UserAdd {
            name: "u".into(), password_hash: None, no_password: true,
        }, grant("u", "r")];
        for g in &grants {
            let (k, e) = g.etcd();
            cmds.push(perm("r", Permission::new(PermissionType::Read, k, e)));
        }
        cmds.extend([user_add("root", "pw"), grant("root", "root"), AuthCommand::AuthEnable]);
        apply_all(&store, &cmds);
        let info = AuthInfo { user: "u".into(), revision: store.revision() };
        let (k, e) = req.etcd();
        let got = store.check_range(&info, &Range::new(k, e)).is_ok();
        let want = universe()
            .iter()
            .filter(|x| req.contains(x))
            .all(|x| grants.iter().any(|g| g.contains(x)));
        prop_assert_eq!(got, want, "grants {:?} request {:?}", grants, req);
    }
}
