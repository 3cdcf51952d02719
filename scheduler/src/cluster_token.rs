//! Where a process finds its cluster's token (see [`manta_flight::auth`] for what it guards).
//!
//! The head makes the token when it starts (or takes the operator's, `--token` /
//! `MANTA_TOKEN`) and writes it to a file only its user can read: `head-<port>.token` in the
//! token directory (`$MANTA_TOKEN_DIR`, default `~/.manta`, made `0700`). A process joining
//! the head at `host:port` takes, in order: the token it was given, `MANTA_TOKEN`, or that
//! file, which exists only on the head's machine, for the head's user. Elsewhere, pass the
//! token. Files are named by port so that several clusters on one machine (tests, or two
//! users) keep apart; the head removes its file when it stops.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! # unsafe { std::env::set_var("MANTA_TOKEN_DIR", dir.path()) };
//! # unsafe { std::env::remove_var("MANTA_TOKEN") };
//! use manta_flight::auth::Token;
//! use manta_scheduler::cluster_token;
//!
//! let token = Token::generate();
//! let file = cluster_token::TokenFile::write(6379, &token).unwrap();
//! assert_eq!(cluster_token::resolve(None, "127.0.0.1:6379").unwrap(), token);
//! drop(file); // the head stopped: its file is gone
//! assert!(cluster_token::resolve(None, "127.0.0.1:6379").is_err());
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use manta_flight::auth::Token;

use crate::error::{Error, Result};

/// The environment variable a token can be given in.
pub const ENV: &str = "MANTA_TOKEN";

/// The directory of token files: `$MANTA_TOKEN_DIR`, else `~/.manta`.
pub fn token_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MANTA_TOKEN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".manta"),
        // No home (a bare service account): a directory of this user's in the temporary one.
        // SAFETY: getuid cannot fail.
        None => std::env::temp_dir().join(format!("manta-{}", unsafe { libc::getuid() })),
    }
}

/// The token file of the head listening on `port` of this machine.
pub fn token_file(port: u16) -> PathBuf {
    token_dir().join(format!("head-{port}.token"))
}

/// The port of `host:port` or `http://host:port`.
fn port_of(address: &str) -> Option<u16> {
    let address = address.trim().trim_end_matches('/');
    let (_, port) = address.rsplit_once(':')?;
    port.parse().ok()
}

/// The token for the head (or Flight SQL endpoint) at `address`: `given`, else `MANTA_TOKEN`,
/// else the token file of that port on this machine.
pub fn resolve(given: Option<&Token>, address: &str) -> Result<Token> {
    let invalid = |source: manta_flight::auth::InvalidToken, whence: String| Error::NoToken {
        address: address.to_string(),
        reason: format!("{whence}: {source}"),
    };
    if let Some(given) = given {
        return Ok(given.clone());
    }
    if let Some(env) = std::env::var(ENV).ok().filter(|v| !v.trim().is_empty()) {
        return Token::new(&env).map_err(|e| invalid(e, ENV.into()));
    }
    let Some(port) = port_of(address) else {
        return Err(Error::NoToken {
            address: address.to_string(),
            reason: "the address has no port to find the head's token file by".into(),
        });
    };
    let file = token_file(port);
    match fs::read_to_string(&file) {
        Ok(text) => Token::new(&text).map_err(|e| invalid(e, file.display().to_string())),
        Err(e) => Err(Error::NoToken {
            address: address.to_string(),
            reason: format!(
                "no --token, no {ENV}, and {} cannot be read ({e}); a head writes it on its \
                 own machine, for its own user",
                file.display()
            ),
        }),
    }
}

/// Connects to the head at `address` with the token [`resolve`] finds; when it finds none,
/// an unreachable head is the error to report (it is the first thing to fix).
pub async fn connect_head(
    address: &str,
    given: Option<&Token>,
) -> Result<(manta_flight::auth::AuthChannel, Token)> {
    match resolve(given, address) {
        Ok(token) => Ok((crate::server::connect_head(address, &token).await?, token)),
        Err(no_token) => {
            crate::server::connect_head(address, &Token::generate()).await?;
            Err(no_token)
        }
    }
}

/// A head's token file, removed when dropped.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// Writes `token` as the token of the head on `port`, readable by this user only. The file
    /// is written beside its final name and renamed over it, so a reader never sees half.
    pub fn write(port: u16, token: &Token) -> Result<Self> {
        let path = token_file(port);
        let dir = path.parent().expect("a file in a directory").to_path_buf();
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", &dir))?;
        // A directory that was already there keeps only this user's access too.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io("protecting", &dir))?;
        let partial = dir.join(format!(".head-{port}.token.{}", std::process::id()));
        let _ = fs::remove_file(&partial);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io("creating", &partial))?;
        file.write_all(token.secret().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("writing", &partial))?;
        fs::rename(&partial, &path).map_err(io("renaming into place", &path))?;
        Ok(Self { path })
    }

    /// Where the token is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_addresses() {
        assert_eq!(port_of("127.0.0.1:7000"), Some(7000));
        assert_eq!(port_of("http://10.0.0.1:80/"), Some(80));
        assert_eq!(port_of("[::1]:9"), Some(9));
        assert_eq!(port_of("localhost"), None);
    }
}
