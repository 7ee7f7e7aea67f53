//! JWT tokens: round trips with keys generated at test time (HS256, ES256, RS256), the
//! `--auth-token jwt,...` option string with key files, expiry on the injectable clock, the
//! auth revision in the token, verify-only providers and key mismatches.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use mvcc_core::request::Put;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rusd_auth::*;
use storage_api::{Backend, BackendConfig, MemoryBackend};

const T0: Duration = Duration::from_secs(1_700_000_000);

fn store_with(keys: JwtKeys, clock: Arc<ManualClock>) -> AuthStore<MemoryBackend> {
    let be = MemoryBackend::new(BackendConfig::new("")).unwrap();
    let store = AuthStore::open(
        be,
        AuthConfig {
            bcrypt_cost: COST,
            token: TokenProvider::Jwt(keys),
            clock,
        },
    )
    .unwrap();
    apply_all(&store, &setup_commands());
    store
}

fn es256_pair() -> (String, String) {
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let private = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public = key.public_key().to_public_key_pem(LineEnding::LF).unwrap();
    (private, public)
}

fn hs256(secret: &[u8]) -> JwtKeys {
    JwtKeys::from_pem(
        Algorithm::HS256,
        Some(secret),
        None,
        Duration::from_secs(300),
    )
    .unwrap()
}

#[test]
fn hs256_round_trip_and_claims() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = store_with(hs256(b"test-secret-generated-here"), clock.clone());
    let token = store.authenticate("alice", "alicepw").unwrap();
    assert_eq!(token.matches('.').count(), 2, "a JWS compact token");
    let info = store.user_from_token(&token).unwrap().unwrap();
    assert_eq!(
        info,
        AuthInfo {
            user: "alice".into(),
            revision: store.revision()
        }
    );
    store.check_put(&info, &Put::new("app/a", "v", 0)).unwrap();
    // The claims are etcd's: username, revision, exp = now + ttl.
    let claims: serde_json::Value = {
        use jsonwebtoken::{decode, DecodingKey, Validation};
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(b"test-secret-generated-here"),
            &v,
        )
        .unwrap()
        .claims
    };
    assert_eq!(claims["username"], "alice");
    assert_eq!(claims["revision"], store.revision());
    assert_eq!(claims["exp"], T0.as_secs() + 300);
    // Another secret does not verify it.
    let other = store_with(hs256(b"another-secret"), clock);
    assert!(matches!(
        other.user_from_token(&token),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[test]
fn jwt_expires_on_the_clock() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = store_with(hs256(b"k"), clock.clone());
    let token = store.authenticate("alice", "alicepw").unwrap();
    clock.advance(Duration::from_secs(299));
    assert!(store.user_from_token(&token).unwrap().is_some());
    // Unlike simple tokens, use does not extend a JWT.
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        store.user_from_token(&token),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[test]
fn jwt_carries_its_revision_and_goes_stale_after_an_auth_change() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = store_with(hs256(b"k"), clock);
    let token = store.authenticate("alice", "alicepw").unwrap();
    store.apply(&role_add("unrelated")).unwrap();
    let info = store.user_from_token(&token).unwrap().unwrap();
    assert_eq!(info.revision + 1, store.revision());
    let err = store
        .check_put(&info, &Put::new("app/a", "v", 0))
        .unwrap_err();
    assert_eq!(err.to_string(), "etcdserver: revision of auth store is old");
    assert_eq!(err.grpc_code(), 3);
    // Re-authenticating gives a current token.
    let token = store.authenticate("alice", "alicepw").unwrap();
    let info = store.user_from_token(&token).unwrap().unwrap();
    store.check_put(&info, &Put::new("app/a", "v", 0)).unwrap();
    // A deleted user's JWT still parses, but every check refuses it.
    store
        .apply(&AuthCommand::UserDelete {
            name: "alice".into(),
        })
        .unwrap();
    let info = store.user_from_token(&token).unwrap().unwrap();
    assert!(store.check_put(&info, &Put::new("app/a", "v", 0)).is_err());
}

#[test]
fn es256_from_option_string_and_key_files() {
    let (private, public) = es256_pair();
    let dir = tempfile::tempdir().unwrap();
    let priv_path = dir.path().join("priv.pem");
    let pub_path = dir.path().join("pub.pem");
    std::fs::write(&priv_path, &private).unwrap();
    std::fs::write(&pub_path, &public).unwrap();
    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        pub_path.display(),
        priv_path.display()
    );
    let TokenProvider::Jwt(keys) = TokenProvider::from_options(&opts, Duration::ZERO).unwrap()
    else {
        panic!("not a JWT provider")
    };
    assert_eq!(keys.algorithm(), Algorithm::ES256);
    assert_eq!(keys.ttl(), Duration::from_secs(600));
    assert!(!keys.is_verify_only());
    let clock = Arc::new(ManualClock::new(T0));
    let signer = store_with(keys, clock.clone());
    let token = signer.authenticate("bob", "bobpw").unwrap();
    assert_eq!(signer.user_from_token(&token).unwrap().unwrap().user, "bob");

    // Only the private key: verification uses its public half (as etcd).
    let opts = format!("jwt,priv-key={},sign-method=ES256", priv_path.display());
    let TokenProvider::Jwt(keys) = TokenProvider::from_options(&opts, Duration::ZERO).unwrap()
    else {
        panic!("not a JWT provider")
    };
    let other = store_with(keys, clock.clone());
    assert_eq!(other.user_from_token(&token).unwrap().unwrap().user, "bob");

    // Only the public key: verify-only; signing is refused with etcd's error.
    let opts = format!("jwt,pub-key={},sign-method=ES256", pub_path.display());
    let TokenProvider::Jwt(keys) = TokenProvider::from_options(&opts, Duration::ZERO).unwrap()
    else {
        panic!("not a JWT provider")
    };
    assert!(keys.is_verify_only());
    let verifier = store_with(keys, clock);
    assert_eq!(
        verifier.user_from_token(&token).unwrap().unwrap().user,
        "bob"
    );
    let err = verifier.authenticate("bob", "bobpw").unwrap_err();
    assert_eq!(
        err.to_string(),
        "auth: token signing attempted with verify-only key"
    );

    // A token signed with the ES256 key is not accepted by an HS256 provider.
    let hs = store_with(hs256(b"k"), Arc::new(ManualClock::new(T0)));
    assert!(hs.user_from_token(&token).is_err());
}

#[test]
fn key_errors_as_etcd() {
    let (private, _) = es256_pair();
    let (_, other_public) = es256_pair();
    let ttl = Duration::from_secs(60);
    assert!(matches!(
        JwtKeys::from_pem(
            Algorithm::ES256,
            Some(private.as_bytes()),
            Some(other_public.as_bytes()),
            ttl
        ),
        Err(AuthError::KeyMismatch)
    ));
    assert!(matches!(
        JwtKeys::from_pem(Algorithm::ES256, None, None, ttl),
        Err(AuthError::MissingKey)
    ));
    assert!(matches!(
        JwtKeys::from_pem(Algorithm::ES256, Some(b"not pem"), None, ttl),
        Err(AuthError::JwtConfig(_))
    ));
    // An unreadable key file is an invalid option (etcd folds it into ErrInvalidAuthOpts).
    assert!(matches!(
        TokenProvider::from_options(
            "jwt,priv-key=/nonexistent/key.pem,sign-method=ES256",
            Duration::ZERO
        ),
        Err(AuthError::InvalidAuthOpts)
    ));
    assert!(matches!(
        TokenProvider::from_options("jwt,sign-method=HS256", Duration::ZERO),
        Err(AuthError::MissingKey)
    ));
}

#[test]
fn rs256_round_trip() {
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
    let private = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let public = key
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let keys = JwtKeys::from_pem(
        Algorithm::RS256,
        Some(private.as_bytes()),
        Some(public.as_bytes()),
        Duration::from_secs(60),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = store_with(keys, clock.clone());
    let token = store.authenticate("root", "rootpw").unwrap();
    let info = store.user_from_token(&token).unwrap().unwrap();
    store.check_admin(&info).unwrap();
    let verify_only = JwtKeys::from_pem(
        Algorithm::RS256,
        None,
        Some(public.as_bytes()),
        Duration::from_secs(60),
    )
    .unwrap();
    let verifier = store_with(verify_only, clock);
    assert_eq!(
        verifier.user_from_token(&token).unwrap().unwrap().user,
        "root"
    );
}
