//! Which engine a command talks to: a URL, or a named connection of a `tributary.toml`.
//!
//! ```toml
//! default = "local"
//!
//! [connections.local]
//! url = "native:///var/lib/trib"
//!
//! [connections.cluster]
//! backend = "kafka"
//! bootstrap_servers = "10.0.0.5:9092"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tributary::{Client, Config};

use crate::Target;
use crate::error::CliError;

/// The clients of one process, by what named them, so that commands run in one process
/// (tests; `mirror` between two streams of one engine) share an engine — which matters
/// for `memory://`, whose streams live only as long as its client.
#[derive(Debug, Default)]
pub struct Session {
    clients: HashMap<String, Client>,
}

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client for the command line's connection options.
    pub(crate) async fn client(&mut self, target: &Target) -> Result<Client, CliError> {
        let (name, config) = resolve(target, None)?;
        self.connect(name, config).await
    }

    /// The client for a connection name or URL given as an argument (`mirror`), or
    /// the command line's when `named` is `None`; `adjust` may change the config before a
    /// new client is made with it.
    pub(crate) async fn client_for(
        &mut self,
        target: &Target,
        named: Option<&str>,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<Client, CliError> {
        let (name, mut config) = resolve(target, named)?;
        let before = config.clone();
        adjust(&mut config);
        // A changed config is another client: the unchanged one may be in use.
        let name = if config == before {
            name
        } else {
            format!("{name} (adjusted)")
        };
        self.connect(name, config).await
    }

    async fn connect(&mut self, name: String, config: Config) -> Result<Client, CliError> {
        if let Some(client) = self.clients.get(&name) {
            return Ok(client.clone());
        }
        let client = Client::connect(config)
            .await
            .map_err(|e| CliError::engine(&format!("connecting to {name}"), &e))?;
        self.clients.insert(name, client.clone());
        Ok(client)
    }
}

/// The name (URL or `connection NAME`) and config a command line or argument selects.
fn resolve(target: &Target, named: Option<&str>) -> Result<(String, Config), CliError> {
    if let Some(named) = named {
        return if named.contains("://") {
            from_url(named)
        } else {
            from_file(target, named)
        };
    }
    if let Some(url) = &target.url {
        return from_url(url);
    }
    if let Some(name) = &target.connection {
        return from_file(target, name);
    }
    if let Ok(url) = std::env::var("TRIBUTARY_URL") {
        return from_url(&url);
    }
    if let Ok(name) = std::env::var("TRIBUTARY_CONNECTION") {
        return from_file(target, &name);
    }
    match config_file(target) {
        Some(path) => {
            let file = read_file(&path)?;
            let Some(default) = file.get("default").and_then(|d| d.as_str()) else {
                return Err(CliError::usage(format!(
                    "no engine chosen: {} names no `default` connection; pass --url URL or --connection NAME",
                    path.display()
                )));
            };
            let default = default.to_owned();
            connection(&path, &file, &default)
        }
        None => Err(CliError::usage(
            "no engine chosen: pass --url URL (e.g. --url native:///tmp/trib), set TRIBUTARY_URL, \
             or name a connection of a tributary.toml with --connection NAME",
        )),
    }
}

fn from_url(url: &str) -> Result<(String, Config), CliError> {
    let config = Config::from_url(url).map_err(|e| CliError::engine(&format!("bad URL {url:?}"), &e))?;
    Ok((url.to_owned(), config))
}

fn from_file(target: &Target, name: &str) -> Result<(String, Config), CliError> {
    let Some(path) = config_file(target) else {
        return Err(CliError::usage(format!(
            "connection {name:?} needs a config file: none at ./tributary.toml or \
             ~/.config/tributary/tributary.toml (or pass --config FILE)"
        )));
    };
    let file = read_file(&path)?;
    connection(&path, &file, name)
}

/// The config file to read: `--config`, else the first of ./tributary.toml and
/// ~/.config/tributary/tributary.toml that exists.
fn config_file(target: &Target) -> Option<PathBuf> {
    if let Some(path) = &target.config {
        return Some(path.clone());
    }
    let local = PathBuf::from("tributary.toml");
    if local.is_file() {
        return Some(local);
    }
    let home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let user = home.join("tributary").join("tributary.toml");
    user.is_file().then_some(user)
}

fn read_file(path: &Path) -> Result<toml::Table, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| CliError::usage(format!("{} is not valid TOML: {e}", path.display())))
}

fn connection(path: &Path, file: &toml::Table, name: &str) -> Result<(String, Config), CliError> {
    let connections = file.get("connections").and_then(|c| c.as_table());
    let names = || connections.map_or_else(String::new, |c| c.keys().cloned().collect::<Vec<_>>().join(", "));
    let Some(entry) = connections.and_then(|c| c.get(name)) else {
        return Err(CliError::usage(format!(
            "{} has no connection {name:?} (it has: {})",
            path.display(),
            if names().is_empty() {
                "none".to_owned()
            } else {
                names()
            }
        )));
    };
    let Some(entry) = entry.as_table() else {
        return Err(CliError::usage(format!(
            "{}: connections.{name} must be a table with `url = \"...\"` or `backend = \"...\"` and settings",
            path.display()
        )));
    };
    let invalid =
        |e: tributary::Error| CliError::engine(&format!("{}: connection {name:?}", path.display()), &e);
    let config = match entry.get("url") {
        Some(url) => {
            if entry.len() > 1 {
                return Err(CliError::usage(format!(
                    "{}: connection {name:?} has a url and other keys; put every setting in the URL or \
                     use `backend = \"...\"` with settings",
                    path.display()
                )));
            }
            let Some(url) = url.as_str() else {
                return Err(CliError::usage(format!(
                    "{}: connections.{name}.url must be a string",
                    path.display()
                )));
            };
            Config::from_url(url).map_err(invalid)?
        }
        None => {
            let text = toml::to_string(entry).map_err(|e| CliError::usage(e.to_string()))?;
            Config::from_toml_str(&text).map_err(invalid)?
        }
    };
    Ok((format!("connection {name:?} of {}", path.display()), config))
}
