//! The server secret that signs management tokens: from `KEYLEDGER_JWT_SECRET`, or
//! a random one kept in the data directory (mode 0600, refused if others can read it).

use std::fs;
use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::error::Error;

/// The signing secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ServerSecret(Vec<u8>);

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(***)")
    }
}

impl ServerSecret {
    pub fn from_env_value(value: &str) -> Result<Self, Error> {
        if value.trim().is_empty() {
            return Err(Error::Config("KEYLEDGER_JWT_SECRET is empty".into()));
        }
        if value.len() < 32 {
            tracing::warn!("KEYLEDGER_JWT_SECRET is shorter than 32 bytes; use a longer one");
        }
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
                if text.is_empty() {
                    return Err(Error::Config(format!("{} is empty", path.display())));
                }
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
