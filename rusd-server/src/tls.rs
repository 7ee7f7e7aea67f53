//! Transport security on the client (and metrics) listeners, with etcd's flags:
//! `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`.
//!
//! * A listen URL with the `https` scheme serves TLS ([rustls], no OpenSSL); `http` URLs stay
//!   plain text even when certificates are configured (etcd logs the same warning).
//! * gRPC and HTTP/1.1 share a TLS port as they share a plain one: ALPN picks the protocol
//!   (gRPC clients offer only `h2`; browsers and curl that offer both get `http/1.1`, so
//!   `/health` and `/metrics` answer over HTTPS), and a connection without ALPN is told apart by
//!   its first decrypted bytes ([`crate::sniff`]).
//! * `--client-cert-auth` requires a client certificate signed by `--trusted-ca-file`; the
//!   handshake fails otherwise. With a trusted CA but without `--client-cert-auth`, a client
//!   certificate is verified when presented and optional.
//! * The certificate and key files are re-read when their modification time changes, so a
//!   renewed certificate takes effect on the next handshake without a restart (a pair that does
//!   not parse keeps the previous one and logs the error).
//! * `--auto-tls` (without certificate files) generates a self-signed certificate for the
//!   advertised hosts into `<data-dir>/fixtures/client`, as etcd does.
//!
//! Peer TLS (etcd's `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
//! `--peer-client-cert-auth`, `--peer-auto-tls`) reuses this loading and reload code:
//! [`peer_tls`] builds the server and client configurations of the peer transport (the
//! `--peer-auto-tls` certificate lives in `<data-dir>/fixtures/peer`).
//!
//! The certificates of a connection reach the services as [`ClientConnInfo`] in the request
//! extensions (the common name is the user under `--client-cert-auth`, as in etcd).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig as RustlsConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::error::ServerError;

/// ALPN identifier of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN identifier of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// etcd's TLS flags for one set of listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSettings {
    /// `--cert-file`: the server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// `--key-file`: the server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: CA certificates client certificates must chain to (PEM).
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: require a client certificate signed by the trusted CA.
    pub client_cert_auth: bool,
    /// `--auto-tls`: generate a self-signed certificate when no certificate files are given.
    pub auto_tls: bool,
}

impl TlsSettings {
    /// True when a certificate is configured (files or `--auto-tls`): `https` URLs can be served.
    pub fn is_configured(&self) -> bool {
        (self.cert_file.is_some() && self.key_file.is_some()) || self.auto_tls
    }

    /// Sets the certificate and key files.
    pub fn with_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// Sets the trusted CA file.
    pub fn with_trusted_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.trusted_ca_file = Some(ca.into());
        self
    }

    /// Requires client certificates.
    pub fn with_client_cert_auth(mut self, yes: bool) -> Self {
        self.client_cert_auth = yes;
        self
    }

    /// Generates a self-signed certificate when no files are given.
    pub fn with_auto_tls(mut self, yes: bool) -> Self {
        self.auto_tls = yes;
        self
    }
}

fn tls_err(what: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(what.to_string())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ServerError> {
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| tls_err(format!("{}: {e}", cert.display())))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| tls_err(format!("{} does not match its key: {e}", cert.display())))?;
    Ok(Arc::new(ck))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the certificate of a file pair, re-reading the files when their modification time
/// changes (checked at each handshake: two `stat` calls).
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf) -> Result<Self, ServerError> {
        let stamps = (mtime(&cert), mtime(&key));
        let ck = certified_key(&cert, &key)?;
        Ok(ReloadingCert {
            cert,
            key,
            current: Mutex::new((stamps.0, stamps.1, ck)),
        })
    }
}

impl ReloadingCert {
    /// The current pair (re-read first if the files changed).
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stamps = (mtime(&self.cert), mtime(&self.key));
        let mut cur = self.current.lock();
        if (cur.0, cur.1) != stamps {
            match certified_key(&self.cert, &self.key) {
                Ok(ck) => {
                    tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                    *cur = (stamps.0, stamps.1, ck);
                }
                Err(e) => {
                    // Half-written files during a renewal: keep serving the previous pair and
                    // try again at the next handshake.
                    tracing::warn!(error = %e, "cannot reload the TLS certificate; keeping the previous one");
                }
            }
        }
        Some(cur.2.clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Writes a self-signed certificate for `hosts` into `dir` (`cert.pem`, `key.pem`), or reuses
/// the pair a previous start wrote there. Returns the two paths.
pub fn auto_tls_files(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), ServerError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| tls_err(format!("{}: {e}", dir.display())))?;
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| tls_err(format!("generating a self-signed certificate: {e}")))?;
    let write = |path: &Path, data: &str| -> Result<(), ServerError> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
        std::io::Write::write_all(&mut f, data.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| tls_err(format!("{}: {e}", path.display())))
    };
    write(&key, &generated.signing_key.serialize_pem())?;
    write(&cert, &generated.cert.pem())?;
    Ok((cert, key))
}

/// Builds the TLS acceptor of `settings`. `auto_dir` is where `--auto-tls` keeps its
/// certificate and `hosts` the names it is issued for.
pub fn acceptor(
    settings: &TlsSettings,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let (cert, key) = match (&settings.cert_file, &settings.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) if settings.auto_tls => auto_tls_files(auto_dir, hosts)?,
        (Some(_), None) | (None, Some(_)) => {
            return Err(tls_err("--cert-file and --key-file must be given together"))
        }
        (None, None) => {
            return Err(tls_err(
                "TLS key/cert (--cert-file, --key-file) must be provided for https URLs (or use --auto-tls)",
            ))
        }
    };
    if settings.client_cert_auth && settings.trusted_ca_file.is_none() {
        return Err(tls_err("--client-cert-auth requires --trusted-ca-file"));
    }
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let mut config = server_config(settings, resolver)?;
    // rustls picks the first of the server's protocols the client offers: clients offering both
    // (curl, browsers) get HTTP/1.1, gRPC clients (which offer only h2) get HTTP/2.
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec(), ALPN_H2.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The CA certificates of `ca` as a root store.
fn root_store(ca: &Path) -> Result<RootCertStore, ServerError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
    }
    Ok(roots)
}

/// A rustls server configuration serving `resolver`'s certificate and verifying client
/// certificates against `settings.trusted_ca_file` (required with `client_cert_auth`).
fn server_config(
    settings: &TlsSettings,
    resolver: Arc<ReloadingCert>,
) -> Result<RustlsConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = RustlsConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match &settings.trusted_ca_file {
        Some(ca) => {
            let roots = root_store(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_cert_auth {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(resolver))
}

/// Builds the TLS of the peer transport from etcd's `--peer-*` flags (`settings`):
/// the peer listener's server configuration (mutual TLS with `client_cert_auth`) and the
/// client configuration of the connections to the other members, which verifies their
/// certificates against `--peer-trusted-ca-file` and presents this member's certificate.
///
/// With `--peer-auto-tls` and no certificate files, a self-signed certificate for `hosts` is
/// written to (or reused from) `auto_dir`, and, as etcd does for self-signed peer
/// certificates, the other members' certificates are not verified (the traffic is encrypted,
/// not authenticated).
pub fn peer_tls(
    settings: &TlsSettings,
    auto_dir: &Path,
    hosts: &[String],
) -> Result<rusd_raft::PeerTls, ServerError> {
    let (cert, key, auto) = match (&settings.cert_file, &settings.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        (None, None) if settings.auto_tls => {
            let (c, k) = auto_tls_files(auto_dir, hosts)?;
            (c, k, true)
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(tls_err(
                "--peer-cert-file and --peer-key-file must be given together",
            ))
        }
        (None, None) => {
            return Err(tls_err(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for https peer URLs (or use --peer-auto-tls)",
            ))
        }
    };
    if settings.client_cert_auth && settings.trusted_ca_file.is_none() {
        return Err(tls_err(
            "--peer-client-cert-auth requires --peer-trusted-ca-file",
        ));
    }
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let mut server = server_config(settings, resolver.clone())?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match &settings.trusted_ca_file {
        Some(ca) => builder.with_root_certificates(root_store(ca)?),
        None if auto => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SelfSignedPeer(provider))),
        None => {
            return Err(tls_err(
                "--peer-trusted-ca-file must be provided to verify the other members' certificates (or use --peer-auto-tls)",
            ))
        }
    };
    let mut client = builder.with_client_cert_resolver(resolver);
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(rusd_raft::PeerTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The verifier of `--peer-auto-tls` members: any certificate is accepted (etcd skips the
/// verification of self-signed peer certificates), the handshake signatures are checked.
#[derive(Debug)]
struct SelfSignedPeer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SelfSignedPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the services learn of a client connection (request extension, via tonic's
/// [`Connected`]).
#[derive(Debug, Clone, Default)]
pub struct ClientConnInfo {
    /// The TCP peer address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The verified client certificate chain (TLS with a client certificate), leaf first.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl ClientConnInfo {
    /// The common name of the client certificate's subject, if a certificate was presented
    /// (etcd's user name under `--client-cert-auth`).
    pub fn common_name(&self) -> Option<String> {
        let leaf = self.peer_certs.as_ref()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let cn = cert.subject().iter_common_name().next()?;
        cn.as_str().ok().map(str::to_owned)
    }
}

/// A connection that replays bytes already read from it before reading on: the first bytes of a
/// TLS connection without ALPN were read to tell gRPC from HTTP/1.1.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Wraps `inner`, replaying `prefix` first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The wrapped connection.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A client connection, plain or TLS.
#[derive(Debug)]
pub enum ClientIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (with the bytes read to tell the protocol apart when ALPN did not).
    Tls(Box<Rewind<TlsStream<TcpStream>>>),
}

impl Connected for ClientIo {
    type ConnectInfo = ClientConnInfo;

    fn connect_info(&self) -> ClientConnInfo {
        match self {
            ClientIo::Plain(s) => ClientConnInfo {
                remote_addr: TcpConnectInfo::remote_addr(&s.connect_info()),
                peer_certs: None,
            },
            ClientIo::Tls(s) => {
                let (tcp, conn) = s.inner().get_ref();
                ClientConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    peer_certs: conn
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
                }
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ClientIo::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            ClientIo::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Completes the TLS handshake on `tcp` and tells the protocol: the ALPN result when the client
/// negotiated one, else the first decrypted bytes (kept and replayed).
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> io::Result<(crate::sniff::Protocol, ClientIo)> {
    use crate::sniff::{Protocol, H2_PREFACE};
    use tokio::io::AsyncReadExt;
    let mut tls = acceptor.accept(tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let proto = match alpn.as_deref() {
        Some(ALPN_H2) => Some(Protocol::Http2),
        Some(_) => Some(Protocol::Http1),
        None => None,
    };
    if let Some(p) = proto {
        return Ok((p, ClientIo::Tls(Box::new(Rewind::new(Vec::new(), tls)))));
    }
    let mut prefix = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; 24];
    let proto = loop {
        let want = H2_PREFACE.len() - prefix.len();
        let n = tls.read(&mut buf[..want]).await?;
        if n == 0 {
            break Protocol::Closed;
        }
        prefix.extend_from_slice(&buf[..n]);
        if prefix[..] != H2_PREFACE[..prefix.len()] {
            break Protocol::Http1;
        }
        if prefix.len() == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    Ok((proto, ClientIo::Tls(Box::new(Rewind::new(prefix, tls)))))
}
