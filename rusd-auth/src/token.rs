//! Token providers (etcd `auth/simple_token.go`, `auth/jwt.go`, `auth/options.go`) and the
//! `--auth-token` option string.
//!
//! * **simple** (etcd's default): `<16 random letters>.<index>`, held in memory only, mapped to
//!   a user; a lookup refreshes the TTL (`--auth-token-ttl`, default 300 s); the token dies when
//!   its TTL passes without use, when its user is deleted or changes password, and when auth is
//!   disabled. The [`crate::AuthInfo`] of a simple token carries the store's *current* auth
//!   revision (etcd `tokenSimple.info(ctx, token, as.Revision())`), so a simple token never goes
//!   stale by itself: "revision of auth store is old" then only reports an auth change that
//!   happened between reading the token and checking the request.
//! * **jwt**: a signed JWT with claims `username`, `revision` (the auth revision at
//!   authentication) and `exp`; nothing is kept in memory. The token's revision is checked
//!   against the store's on every permission check, so after any auth change every older JWT is
//!   refused with "etcdserver: revision of auth store is old" until the client authenticates
//!   again (etcd's clients do that on this error).
//! * **""** (empty option string): no tokens at all (etcd `tokenNop`): authentication fails and
//!   every token is invalid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{AuthError, AuthResult};
use crate::model::AuthInfo;

/// etcd's default simple-token TTL (`--auth-token-ttl 300`).
pub const DEFAULT_SIMPLE_TOKEN_TTL: Duration = Duration::from_secs(300);
/// etcd's default JWT TTL (`auth.DefaultTTL`, 5 minutes).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Length of the random part of a simple token (etcd `defaultSimpleTokenLength`).
pub const SIMPLE_TOKEN_LENGTH: usize = 16;

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The parsed `--auth-token` option string (etcd `decomposeOpts` + `jwtOptions.Parse`), before
/// any key file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOptions {
    /// `""`: no token provider.
    Nop,
    /// `simple` (options after the type are accepted and ignored, as etcd does).
    Simple,
    /// `jwt,sign-method=...,pub-key=...,priv-key=...,ttl=...`.
    Jwt(JwtOptions),
}

/// Options of the JWT provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// `sign-method`: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 (etcd also knows
    /// ES512, which the `jsonwebtoken` crate does not implement: refused with
    /// [`AuthError::InvalidAuthMethod`]).
    pub sign_method: Algorithm,
    /// `pub-key`: PEM file of the public key (verification).
    pub pub_key: Option<PathBuf>,
    /// `priv-key`: PEM file of the private key (RS/PS/ES), or the raw HMAC secret (HS).
    pub priv_key: Option<PathBuf>,
    /// `ttl` (Go duration syntax, default 5m).
    pub ttl: Duration,
}

impl TokenOptions {
    /// Parses an `--auth-token` value exactly as etcd 3.4: comma-separated, the first field
    /// is the type, every other field must be one `name=value` pair and no name may repeat
    /// (else [`AuthError::InvalidAuthOpts`]); an unknown type is `InvalidAuthOpts`; for `jwt`,
    /// a bad `ttl` or an unknown `sign-method` is `InvalidAuthOpts` too (etcd's
    /// `newTokenProviderJWT` folds every option error into it). Unknown JWT options are
    /// ignored with a warning, as etcd does.
    pub fn parse(opts: &str) -> AuthResult<Self> {
        let mut fields = opts.split(',');
        let kind = fields.next().unwrap_or_default();
        let mut map: HashMap<&str, &str> = HashMap::new();
        for field in fields {
            let pair: Vec<&str> = field.split('=').collect();
            let [name, value] = pair.as_slice() else {
                return Err(AuthError::InvalidAuthOpts);
            };
            if map.insert(name, value).is_some() {
                return Err(AuthError::InvalidAuthOpts);
            }
        }
        match kind {
            "simple" => Ok(TokenOptions::Simple),
            "" => Ok(TokenOptions::Nop),
            "jwt" => {
                for name in map.keys() {
                    if !["sign-method", "pub-key", "priv-key", "ttl"].contains(name) {
                        tracing::warn!(option = %name, "unknown JWT token option ignored");
                    }
                }
                let ttl = match map.get("ttl").copied().unwrap_or_default() {
                    "" => DEFAULT_JWT_TTL,
                    s => parse_go_duration(s).ok_or(AuthError::InvalidAuthOpts)?,
                };
                let sign_method = parse_sign_method(map.get("sign-method").copied())
                    .ok_or(AuthError::InvalidAuthOpts)?;
                let path = |n: &str| {
                    map.get(n)
                        .filter(|v| !v.is_empty())
                        .map(|v| PathBuf::from(*v))
                };
                Ok(TokenOptions::Jwt(JwtOptions {
                    sign_method,
                    pub_key: path("pub-key"),
                    priv_key: path("priv-key"),
                    ttl,
                }))
            }
            _ => Err(AuthError::InvalidAuthOpts),
        }
    }
}

/// Maps a JWT `sign-method` name to the `jsonwebtoken` algorithm (etcd `jwt.GetSigningMethod`).
pub fn parse_sign_method(name: Option<&str>) -> Option<Algorithm> {
    Some(match name? {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        _ => return None,
    })
}

/// Go's `time.ParseDuration` for non-negative values: a sequence of decimal numbers with
/// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `300s`, `5m`,
/// `1h30m`, `1.5h`; `0` alone is zero.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos;
        rest = tail;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

/// Loaded JWT keys: what `--auth-token jwt,...` configures.
pub struct JwtKeys {
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("alg", &self.alg)
            .field("verify_only", &self.encoding.is_none())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn cfg_err(e: impl std::fmt::Display) -> AuthError {
    AuthError::JwtConfig(e.to_string())
}

impl JwtKeys {
    /// Reads the key files named by the options (etcd `newTokenProviderJWT`); an unreadable
    /// file is [`AuthError::InvalidAuthOpts`] as in etcd.
    pub fn from_options(opts: &JwtOptions) -> AuthResult<Self> {
        let read = |p: &Option<PathBuf>| -> AuthResult<Option<Vec<u8>>> {
            p.as_ref()
                .map(std::fs::read)
                .transpose()
                .map_err(|_| AuthError::InvalidAuthOpts)
        };
        let private = read(&opts.priv_key)?;
        let public = read(&opts.pub_key)?;
        Self::from_pem(
            opts.sign_method,
            private.as_deref(),
            public.as_deref(),
            opts.ttl,
        )
    }

    /// Keys from memory: for HS* `private` is the raw secret; for RS*/PS* and ES* PEM keys
    /// (PKCS#1 or PKCS#8 RSA; SEC1 or PKCS#8 EC private keys; SPKI or PKCS#1 public keys).
    /// Verification always uses the public half of the private key when there is one (as
    /// etcd); with only a public key the provider is verify-only (tokens cannot be issued,
    /// [`AuthError::VerifyOnly`]). No key is [`AuthError::MissingKey`]; a public key that is
    /// not the private key's is [`AuthError::KeyMismatch`].
    pub fn from_pem(
        alg: Algorithm,
        private: Option<&[u8]>,
        public: Option<&[u8]>,
        ttl: Duration,
    ) -> AuthResult<Self> {
        let private = private.filter(|k| !k.is_empty());
        let public = public.filter(|k| !k.is_empty());
        let (encoding, decoding) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private.ok_or(AuthError::MissingKey)?;
                (
                    Some(EncodingKey::from_secret(secret)),
                    DecodingKey::from_secret(secret),
                )
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => rsa_keys(private, public)?,
            Algorithm::ES256 => ec_keys::<p256::NistP256>(private, public)?,
            Algorithm::ES384 => ec_keys::<p384::NistP384>(private, public)?,
            _ => return Err(AuthError::InvalidAuthMethod),
        };
        Ok(JwtKeys {
            alg,
            encoding,
            decoding,
            ttl,
        })
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The token TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True when only a public key was given.
    pub fn is_verify_only(&self) -> bool {
        self.encoding.is_none()
    }

    /// etcd `tokenJWT.assign`.
    pub(crate) fn assign(&self, user: &str, revision: u64, now: Duration) -> AuthResult<String> {
        let key = self.encoding.as_ref().ok_or(AuthError::VerifyOnly)?;
        let claims = JwtClaims {
            username: user.to_owned(),
            revision,
            exp: Some((now + self.ttl).as_secs()),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|e| AuthError::JwtSign(e.to_string()))
    }

    /// etcd `tokenJWT.info`: signature with the configured method, then `exp` (if present)
    /// must be after `now`; `username` and `revision` must be present.
    pub(crate) fn info(&self, token: &str, now: Duration) -> Option<AuthInfo> {
        let mut validation = Validation::new(self.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<JwtClaims>(token, &self.decoding, &validation).ok()?;
        if let Some(exp) = data.claims.exp {
            if now >= Duration::from_secs(exp) {
                return None;
            }
        }
        Some(AuthInfo {
            user: data.claims.username,
            revision: data.claims.revision,
        })
    }
}

fn rsa_keys(
    private: Option<&[u8]>,
    public: Option<&[u8]>,
) -> AuthResult<(Option<EncodingKey>, DecodingKey)> {
    use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rsa::traits::PublicKeyParts;

    let parse_pub = |pem: &[u8]| -> AuthResult<rsa::RsaPublicKey> {
        let text = std::str::from_utf8(pem).map_err(cfg_err)?;
        rsa::RsaPublicKey::from_public_key_pem(text)
            .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(text))
            .map_err(cfg_err)
    };
    let public = public.map(parse_pub).transpose()?;
    let Some(private) = private else {
        let public = public.ok_or(AuthError::MissingKey)?;
        let decoding = DecodingKey::from_rsa_raw_components(
            &public.n().to_bytes_be(),
            &public.e().to_bytes_be(),
        );
        return Ok((None, decoding));
    };
    let text = std::str::from_utf8(private).map_err(cfg_err)?;
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(text)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(text))
        .map_err(cfg_err)?;
    let derived = key.to_public_key();
    if let Some(public) = public {
        if public != derived {
            return Err(AuthError::KeyMismatch);
        }
    }
    let der = key.to_pkcs1_der().map_err(cfg_err)?;
    let encoding = EncodingKey::from_rsa_der(der.as_bytes());
    let decoding = DecodingKey::from_rsa_raw_components(
        &derived.n().to_bytes_be(),
        &derived.e().to_bytes_be(),
    );
    Ok((Some(encoding), decoding))
}

fn ec_keys<C>(
    private: Option<&[u8]>,
    public: Option<&[u8]>,
) -> AuthResult<(Option<EncodingKey>, DecodingKey)>
where
    C: p256::elliptic_curve::CurveArithmetic + p256::pkcs8::AssociatedOid,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
    p256::elliptic_curve::AffinePoint<C>: p256::elliptic_curve::sec1::FromEncodedPoint<C>
        + p256::elliptic_curve::sec1::ToEncodedPoint<C>,
{
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::elliptic_curve::{PublicKey, SecretKey};
    use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};

    let parse_pub = |pem: &[u8]| -> AuthResult<PublicKey<C>> {
        let text = std::str::from_utf8(pem).map_err(cfg_err)?;
        PublicKey::<C>::from_public_key_pem(text).map_err(cfg_err)
    };
    let public = public.map(parse_pub).transpose()?;
    let point = |p: &PublicKey<C>| p.as_affine().to_encoded_point(false).as_bytes().to_vec();
    let Some(private) = private else {
        let public = public.ok_or(AuthError::MissingKey)?;
        return Ok((None, DecodingKey::from_ec_der(&point(&public))));
    };
    let text = std::str::from_utf8(private).map_err(cfg_err)?;
    let key = SecretKey::<C>::from_pkcs8_pem(text)
        .or_else(|_| SecretKey::<C>::from_sec1_pem(text))
        .map_err(cfg_err)?;
    let derived = key.public_key();
    if let Some(public) = public {
        if public != derived {
            return Err(AuthError::KeyMismatch);
        }
    }
    let der = key.to_pkcs8_der().map_err(cfg_err)?;
    let encoding = EncodingKey::from_ec_der(der.as_bytes());
    Ok((Some(encoding), DecodingKey::from_ec_der(&point(&derived))))
}

/// The claims etcd puts in its JWTs.
#[derive(Debug, Serialize, Deserialize)]
struct JwtClaims {
    username: String,
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

/// Which token provider the store uses (built from [`TokenOptions`]).
#[derive(Debug)]
pub enum TokenProvider {
    /// No tokens (`--auth-token ""`).
    Nop,
    /// Simple tokens with this TTL (`--auth-token simple`, `--auth-token-ttl`).
    Simple {
        /// Idle time after which a token dies; 0 = the default 300 s (as etcd).
        ttl: Duration,
    },
    /// JWT.
    Jwt(JwtKeys),
}

impl TokenProvider {
    /// Builds the provider of an `--auth-token` value (reading JWT key files) with the simple
    /// token TTL of `--auth-token-ttl`.
    pub fn from_options(opts: &str, simple_ttl: Duration) -> AuthResult<Self> {
        Ok(match TokenOptions::parse(opts)? {
            TokenOptions::Nop => TokenProvider::Nop,
            TokenOptions::Simple => TokenProvider::Simple { ttl: simple_ttl },
            TokenOptions::Jwt(o) => TokenProvider::Jwt(JwtKeys::from_options(&o)?),
        })
    }
}

/// etcd `tokenSimple.genTokenPrefix`: 16 random ASCII letters from the OS generator.
pub fn gen_simple_token_prefix() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..SIMPLE_TOKEN_LENGTH)
        .map(|_| char::from(LETTERS[rng.gen_range(0..LETTERS.len())]))
        .collect()
}

/// etcd `isValidSimpleToken`'s format part: `<prefix>.<decimal index>` (the wait for the
/// index to be applied belongs to the raft layer).
fn is_simple_token_format(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    matches!(parts.as_slice(), [_, idx] if idx.parse::<i64>().is_ok())
}

#[derive(Debug)]
pub(crate) struct SimpleEntry {
    user: String,
    expires: Duration,
}

/// Live token state of the store.
#[derive(Debug)]
pub(crate) enum TokenState {
    Nop,
    Simple {
        ttl: Duration,
        /// `None` while auth is disabled (etcd's `simpleTokenKeeper == nil`).
        tokens: Option<HashMap<String, SimpleEntry>>,
    },
    Jwt(JwtKeys),
}

impl TokenState {
    pub(crate) fn new(p: TokenProvider) -> Self {
        match p {
            TokenProvider::Nop => TokenState::Nop,
            TokenProvider::Simple { ttl } => TokenState::Simple {
                ttl: if ttl.is_zero() {
                    DEFAULT_SIMPLE_TOKEN_TTL
                } else {
                    ttl
                },
                tokens: None,
            },
            TokenProvider::Jwt(k) => TokenState::Jwt(k),
        }
    }

    pub(crate) fn enable(&mut self) {
        if let TokenState::Simple { tokens, .. } = self {
            tokens.get_or_insert_with(HashMap::new);
        }
    }

    pub(crate) fn disable(&mut self) {
        if let TokenState::Simple { tokens, .. } = self {
            *tokens = None;
        }
    }

    pub(crate) fn invalidate_user(&mut self, user: &str) {
        if let TokenState::Simple {
            tokens: Some(tokens),
            ..
        } = self
        {
            tokens.retain(|_, e| e.user != user);
        }
    }

    pub(crate) fn is_simple(&self) -> bool {
        matches!(self, TokenState::Simple { .. })
    }

    /// etcd `TokenProvider.assign`.
    pub(crate) fn assign(
        &mut self,
        user: &str,
        revision: u64,
        prefix: &str,
        index: u64,
        now: Duration,
    ) -> AuthResult<String> {
        match self {
            TokenState::Nop => Err(AuthError::AuthFailed),
            TokenState::Simple { ttl, tokens } => {
                let token = format!("{prefix}.{index}");
                if let Some(tokens) = tokens {
                    // etcd panics on a reused token; a reused (prefix, index) can only come
                    // from a replayed command, so the newer assignment simply wins.
                    tokens.insert(
                        token.clone(),
                        SimpleEntry {
                            user: user.to_owned(),
                            expires: now + *ttl,
                        },
                    );
                }
                Ok(token)
            }
            TokenState::Jwt(keys) => keys.assign(user, revision, now),
        }
    }

    /// etcd `TokenProvider.info`; `store_revision` is the store's current auth revision.
    pub(crate) fn info(
        &mut self,
        token: &str,
        store_revision: u64,
        now: Duration,
    ) -> Option<AuthInfo> {
        match self {
            TokenState::Nop => None,
            TokenState::Simple { ttl, tokens } => {
                if !is_simple_token_format(token) {
                    return None;
                }
                let tokens = tokens.as_mut()?;
                let entry = tokens.get_mut(token)?;
                if now > entry.expires {
                    tokens.remove(token);
                    return None;
                }
                entry.expires = now + *ttl;
                Some(AuthInfo {
                    user: entry.user.clone(),
                    revision: store_revision,
                })
            }
            TokenState::Jwt(keys) => keys.info(token, now),
        }
    }

    /// Drops expired simple tokens (etcd's 1-second TTL sweeper; lookups also expire lazily).
    pub(crate) fn purge_expired(&mut self, now: Duration) -> usize {
        match self {
            TokenState::Simple {
                tokens: Some(tokens),
                ..
            } => {
                let before = tokens.len();
                tokens.retain(|_, e| now <= e.expires);
                before - tokens.len()
            }
            _ => 0,
        }
    }

    pub(crate) fn simple_token_count(&self) -> usize {
        match self {
            TokenState::Simple {
                tokens: Some(tokens),
                ..
            } => tokens.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_strings_as_etcd_decompose_opts() {
        assert_eq!(
            TokenOptions::parse("simple").ok(),
            Some(TokenOptions::Simple)
        );
        assert_eq!(TokenOptions::parse("").ok(), Some(TokenOptions::Nop));
        assert_eq!(
            TokenOptions::parse("simple,foo=bar").ok(),
            Some(TokenOptions::Simple)
        );
        for bad in [
            "unknown",
            "simple,foo",
            "simple,a=b=c",
            "jwt,ttl=1s,ttl=2s",
            "jwt,sign-method=XX256",
            "jwt",
            "jwt,sign-method=HS256,ttl=5x",
            "jwt,sign-method=ES512",
        ] {
            assert!(
                matches!(TokenOptions::parse(bad), Err(AuthError::InvalidAuthOpts)),
                "{bad}"
            );
        }
        let Ok(TokenOptions::Jwt(o)) = TokenOptions::parse(
            "jwt,pub-key=/k/pub.pem,priv-key=/k/priv.pem,sign-method=RS256,ttl=10m",
        ) else {
            panic!("jwt options")
        };
        assert_eq!(o.sign_method, Algorithm::RS256);
        assert_eq!(o.pub_key, Some(PathBuf::from("/k/pub.pem")));
        assert_eq!(o.priv_key, Some(PathBuf::from("/k/priv.pem")));
        assert_eq!(o.ttl, Duration::from_secs(600));
        let Ok(TokenOptions::Jwt(o)) = TokenOptions::parse("jwt,sign-method=HS256") else {
            panic!("jwt default ttl")
        };
        assert_eq!(o.ttl, DEFAULT_JWT_TTL);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("300s"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("-1s"), None);
    }

    #[test]
    fn simple_token_prefix_shape() {
        let p = gen_simple_token_prefix();
        assert_eq!(p.len(), SIMPLE_TOKEN_LENGTH);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(p, gen_simple_token_prefix());
        assert!(is_simple_token_format("abc.12"));
        assert!(!is_simple_token_format("abc"));
        assert!(!is_simple_token_format("a.b.1"));
        assert!(!is_simple_token_format("abc.x"));
    }

    #[test]
    fn missing_keys_and_verify_only() {
        assert!(matches!(
            JwtKeys::from_pem(Algorithm::HS256, None, None, DEFAULT_JWT_TTL),
            Err(AuthError::MissingKey)
        ));
        assert!(matches!(
            JwtKeys::from_pem(Algorithm::RS256, None, None, DEFAULT_JWT_TTL),
            Err(AuthError::MissingKey)
        ));
        assert!(matches!(
            JwtKeys::from_pem(Algorithm::EdDSA, Some(b"k"), None, DEFAULT_JWT_TTL),
            Err(AuthError::InvalidAuthMethod)
        ));
    }
}
