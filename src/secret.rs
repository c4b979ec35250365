//! The server secret that signs management tokens: from `KEYLEDGER_JWT_SECRET`, or
//! a random one kept in the data directory (mode 0600, refused if others can read it).
//! Either way it must be at least [`MIN_SECRET_LEN`] bytes long.

use std::fs;
use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::error::Error;

/// The shortest secret accepted, in bytes. Whoever holds a management token (or
/// sees one signed with the secret) can test guesses of an HS256 secret offline, as
/// fast as they can compute HMACs: a short one is found, and with it every tenant's
/// tokens can be forged. 32 bytes is SHA-256's output size (RFC 7518 section 3.2
/// asks HS256 keys to be at least that long); a generated secret is 64 hex digits.
pub const MIN_SECRET_LEN: usize = 32;

/// How to make a secret that passes, for the error messages.
const HOW_TO_MAKE_ONE: &str = "make one with `openssl rand -hex 32`";

/// The signing secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ServerSecret(Vec<u8>);

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(***)")
    }
}

impl ServerSecret {
    /// The secret of `KEYLEDGER_JWT_SECRET`, used byte for byte; refused when it
    /// is shorter than [`MIN_SECRET_LEN`] bytes (not counting surrounding white
    /// space, which adds nothing a guesser must find).
    pub fn from_env_value(value: &str) -> Result<Self, Error> {
        check_length("KEYLEDGER_JWT_SECRET", value)?;
        Ok(Self(value.as_bytes().to_vec()))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Reads the secret file, creating it with a fresh random secret when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match fs::read_to_string(path) {
            Ok(text) => {
                check_permissions(path)?;
                let text = text.trim();
                // A file written by hand is held to the same minimum as the variable.
                check_length(&path.display().to_string(), text)?;
                Ok(Self(text.as_bytes().to_vec()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(Error::Config(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn create(path: &Path) -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let text = hex::encode(bytes);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", path.display())))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), "created a new server secret");
        Ok(Self(text.into_bytes()))
    }
}

/// Refuses an empty secret or one shorter than [`MIN_SECRET_LEN`] bytes; `source`
/// names where it came from. The message gives the length, never the secret.
fn check_length(source: &str, secret: &str) -> Result<(), Error> {
    let len = secret.trim().len();
    if len == 0 {
        return Err(Error::Config(format!(
            "{source} is empty: the server secret must be at least {MIN_SECRET_LEN} bytes \
             ({HOW_TO_MAKE_ONE})"
        )));
    }
    if len < MIN_SECRET_LEN {
        let unit = if len == 1 { "byte" } else { "bytes" };
        return Err(Error::Config(format!(
            "{source} is too short ({len} {unit}): the server secret must be at least \
             {MIN_SECRET_LEN} bytes ({HOW_TO_MAKE_ONE})"
        )));
    }
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|e| Error::Config(format!("cannot stat {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{} is readable by other users (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let first = ServerSecret::load_or_create(&path).expect("create");
        let second = ServerSecret::load_or_create(&path).expect("reload");
        assert_eq!(first.expose(), second.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(format!("{first:?}"), "ServerSecret(***)");
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused_naming_the_minimum() {
        for short in [
            "x",
            "0123456789abcdef0123456789abcde",
            "  hunter2  ",
            "\t \n",
        ] {
            let error = ServerSecret::from_env_value(short).expect_err(short);
            let Error::Config(message) = &error else {
                panic!("a configuration error, got {error:?}");
            };
            assert!(message.contains("KEYLEDGER_JWT_SECRET"), "{message}");
            assert!(message.contains("at least 32 bytes"), "{message}");
            assert!(message.contains("openssl rand -hex 32"), "{message}");
            // (Too short a needle would match the message's own words.)
            if short.trim().len() > 3 {
                assert!(
                    !message.contains(short.trim()),
                    "the secret is not shown: {message}"
                );
            }
        }
        let message = ServerSecret::from_env_value("x")
            .expect_err("short")
            .to_string();
        assert!(message.contains("too short (1 byte)"), "{message}");
        // Padding is not length: 31 bytes inside white space are still 31.
        assert!(ServerSecret::from_env_value(" 0123456789abcdef0123456789abcde ").is_err());

        let exact = "0123456789abcdef0123456789abcdef";
        assert_eq!(exact.len(), MIN_SECRET_LEN);
        let secret = ServerSecret::from_env_value(exact).expect("32 bytes are enough");
        assert_eq!(secret.expose(), exact.as_bytes());
    }

    #[test]
    fn a_short_secret_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        fs::write(&path, "hunter2\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let message = ServerSecret::load_or_create(&path)
            .expect_err("7 bytes")
            .to_string();
        assert!(message.contains("at least 32 bytes"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        ServerSecret::load_or_create(&path).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            ServerSecret::load_or_create(&path),
            Err(Error::Config(_))
        ));
    }
}
