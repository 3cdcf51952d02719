//! The cluster token: who may call a Manta service.
//!
//! Every service of a cluster (the head, the node daemons, the Flight data plane, worker
//! attach, Flight SQL) is guarded by one shared secret, the [`Token`]: 256 random bits, made
//! by the head when it starts. A caller presents it in the `authorization` header of every
//! gRPC call, as `Bearer <token>` ([`AttachToken`] does this for Manta's own clients; ADBC and
//! JDBC Flight SQL clients send the same header). A server wraps each service in
//! [`RequireToken`], which refuses a call without the header, or with a wrong token, with
//! `UNAUTHENTICATED` before the service sees it. The comparison takes the same time whatever
//! the presented bytes (`subtle`), so the token cannot be guessed a byte at a time.
//!
//! Flight SQL clients that speak only user and password (`Basic` authentication, then the
//! bearer token the handshake answers with) are let in with the token as the password: see
//! [`Token::accepts`].
//!
//! ```
//! use manta_flight::auth::Token;
//!
//! let token = Token::generate();
//! assert!(token.accepts(&format!("Bearer {}", token.secret())));
//! assert!(!token.accepts("Bearer not-the-token"));
//! let same = Token::new(token.secret()).unwrap();
//! assert_eq!(same, token);
//! ```

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rand::TryRngCore;
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Base64 of `Basic` credentials, padded or not (Go's Flight client leaves the padding off).
const BASIC: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The header a token travels in.
pub const HEADER: &str = "authorization";

/// A cluster's shared secret. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    secret: Arc<str>,
}

/// Why a string is not a token.
#[derive(Debug, thiserror::Error)]
#[error("not a usable cluster token: {0}")]
pub struct InvalidToken(&'static str);

impl Token {
    /// Bytes of randomness in a generated token.
    pub const RANDOM_BYTES: usize = 32;

    /// A new random token: 256 bits from the operating system's generator, as 64 hex digits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; Self::RANDOM_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random generator");
        Self {
            secret: hex_string(&bytes).into(),
        }
    }

    /// A token given by an operator (surrounding whitespace ignored). It must be printable
    /// ASCII without spaces, as it travels in a header, and at least 16 characters long.
    pub fn new(secret: &str) -> Result<Self, InvalidToken> {
        let secret = secret.trim();
        if secret.len() < 16 {
            return Err(InvalidToken("shorter than 16 characters"));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidToken(
                "only printable ASCII without spaces can travel in a header",
            ));
        }
        Ok(Self {
            secret: secret.into(),
        })
    }

    /// The secret itself, to hand to a process that must present it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The `authorization` header value that presents this token.
    pub fn header_value(&self) -> AsciiMetadataValue {
        format!("Bearer {}", self.secret)
            .parse()
            .expect("a token is printable ASCII")
    }

    /// Whether an `authorization` header value presents this token: `Bearer <token>`, or
    /// `Basic base64(<any user>:<token>)`. Takes the same time for any wrong token of a length.
    pub fn accepts(&self, header: &str) -> bool {
        let presented = match header.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                rest.trim().as_bytes().to_vec()
            }
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
                match BASIC.decode(rest.trim()) {
                    Ok(decoded) => match decoded.iter().position(|&b| b == b':') {
                        Some(colon) => decoded[colon + 1..].to_vec(),
                        None => return false,
                    },
                    Err(_) => return false,
                }
            }
            _ => return false,
        };
        bool::from(presented.ct_eq(self.secret.as_bytes()))
    }

    /// Whether `metadata` carries this token.
    pub fn accepts_metadata(&self, metadata: &MetadataMap) -> bool {
        metadata
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| self.accepts(value))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Client side: adds the token to every call of a channel.
#[derive(Clone, Debug)]
pub struct AttachToken {
    header: AsciiMetadataValue,
}

impl AttachToken {
    /// Presents `token`.
    pub fn new(token: &Token) -> Self {
        Self {
            header: token.header_value(),
        }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(HEADER, self.header.clone());
        Ok(request)
    }
}

/// A channel whose every call presents the cluster token.
pub type AuthChannel = InterceptedService<Channel, AttachToken>;

/// `channel`, presenting `token` on every call.
pub fn with_token(channel: Channel, token: &Token) -> AuthChannel {
    InterceptedService::new(channel, AttachToken::new(token))
}

/// Server side: refuses every call that does not present the token, with `UNAUTHENTICATED`.
#[derive(Clone, Debug)]
pub struct RequireToken {
    token: Token,
}

impl RequireToken {
    /// Lets in callers presenting `token`.
    pub fn new(token: &Token) -> Self {
        Self {
            token: token.clone(),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(HEADER) {
            None => Err(Status::unauthenticated(
                "no cluster token: present it as `authorization: Bearer <token>` (manta start \
                 --head made it; pass --token or set MANTA_TOKEN)",
            )),
            Some(_) if self.token.accepts_metadata(request.metadata()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong cluster token")),
        }
    }
}

/// `service`, refusing callers that do not present `token`.
pub fn guard<S>(service: S, token: &Token) -> InterceptedService<S, RequireToken> {
    InterceptedService::new(service, RequireToken::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_its_token_as_bearer_or_basic_password_and_nothing_else() {
        let token = Token::generate();
        assert_eq!(token.secret().len(), 64);
        assert_ne!(token, Token::generate());
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        assert!(token.accepts(&format!("Bearer {}", token.secret())));
        assert!(token.accepts(&format!("bearer  {}", token.secret())));
        assert!(token.accepts(&basic(&format!("anyone:{}", token.secret()))));
        let unpadded = basic(&format!("anyone:{}", token.secret()));
        assert!(token.accepts(unpadded.trim_end_matches('=')));
        // The secret with its last digit changed.
        let last = if token.secret().ends_with('0') {
            '1'
        } else {
            '0'
        };
        let wrong = format!("{}{last}", &token.secret()[..63]);
        for header in [
            String::new(),
            token.secret().to_string(),
            format!("Bearer {wrong}"),
            format!("Bearer {}x", token.secret()),
            format!("Bearer {}", &token.secret()[..10]),
            "Bearer ".to_string(),
            basic(token.secret()),
            basic(&format!("{}:", token.secret())),
            "Basic !!!not base64".to_string(),
            format!("Token {}", token.secret()),
        ] {
            assert!(!token.accepts(&header), "accepted {header:?}");
        }
    }

    #[test]
    fn an_operator_token_must_be_long_and_header_safe() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("has a space in it, long enough").is_err());
        assert!(Token::new("naïve-but-long-enough-token").is_err());
        let token = Token::new("  a-long-enough-operator-token\n").unwrap();
        assert_eq!(token.secret(), "a-long-enough-operator-token");
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn the_interceptors_agree() {
        let token = Token::generate();
        let attached = AttachToken::new(&token).call(Request::new(())).unwrap();
        assert!(RequireToken::new(&token).call(attached).is_ok());
        let other = AttachToken::new(&Token::generate())
            .call(Request::new(()))
            .unwrap();
        let refused = RequireToken::new(&token).call(other).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = RequireToken::new(&token)
            .call(Request::new(()))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
}
