//! Named contexts, as kubectl and etcdctl have them: a config file
//! (`$XDG_CONFIG_HOME/keyfed/config.toml`, else `~/.config/keyfed/config.toml`)
//! names servers with their addresses and credentials, so a command needs
//! no flags. Precedence: flags, then the environment, then the context.
use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7601";

/// One named server (or replicated node) and how to reach it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Tried in order until one answers (a replicated node has several).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// The admin token itself; prefer `token_file`.
    pub token: Option<String>,
    /// A file holding the admin token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the config file is, from the environment `get` reads.
pub fn config_path(get: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = get("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            get("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| Path::new(&h).join(".config"))
        })?;
    Some(base.join("keyfed").join("config.toml"))
}

impl ConfigFile {
    /// The file at `path`; an absent file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the keyfedctl config {}", path.display()))
            }
        };
        let mut cfg: Self = toml::from_str(&text)
            .with_context(|| format!("the keyfedctl config {} is not valid", path.display()))?;
        // relative paths in a context are relative to the config file
        let dir = path.parent().unwrap_or(Path::new("."));
        for c in cfg.contexts.values_mut() {
            for p in [&mut c.token_file, &mut c.ca, &mut c.cert, &mut c.key]
                .into_iter()
                .flatten()
            {
                *p = resolve(dir, p);
            }
        }
        Ok(cfg)
    }

    /// The context `name` (or the current one); `None` when neither is set.
    pub fn pick(
        &self,
        name: Option<&str>,
        path: &Path,
    ) -> anyhow::Result<Option<(String, Context)>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(c) => Ok(Some((name.to_owned(), c.clone()))),
            None => {
                let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
                bail!(
                    "no context {name:?} in {}; known: {} (add a [contexts.{name}] table, or `keyfedctl context list`)",
                    path.display(),
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                )
            }
        }
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return Path::new(&home).join(rest);
        }
    }
    if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    }
}

/// Sets `current_context = "name"` in the file, keeping everything else
/// (comments too) as it was.
pub fn set_current(path: &Path, name: &str) -> anyhow::Result<()> {
    let cfg = ConfigFile::load(path)?;
    if !cfg.contexts.contains_key(name) {
        cfg.pick(Some(name), path)?;
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the keyfedctl config {}", path.display()))?;
    let line = format!("current_context = {}", toml::Value::String(name.to_owned()));
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // only a top-level key counts: the part before the first table header
    let top = lines
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .unwrap_or(lines.len());
    match lines[..top]
        .iter()
        .position(|l| l.trim_start().starts_with("current_context"))
    {
        Some(i) => lines[i] = line,
        None => lines.insert(0, line),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(path, out)
        .with_context(|| format!("writing the keyfedctl config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_found_under_xdg_config_home_then_home() {
        let env = |k: &str| match k {
            "XDG_CONFIG_HOME" => Some("/x".to_owned()),
            "HOME" => Some("/h".to_owned()),
            _ => None,
        };
        assert_eq!(
            config_path(&env).unwrap(),
            Path::new("/x/keyfed/config.toml")
        );
        let home = |k: &str| (k == "HOME").then(|| "/h".to_owned());
        assert_eq!(
            config_path(&home).unwrap(),
            Path::new("/h/.config/keyfed/config.toml")
        );
    }

    #[test]
    fn use_rewrites_only_the_current_context_line_and_an_unknown_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "# mine\ncurrent_context = \"a\"\n[contexts.a]\naddrs = [\"http://a:1\"]\nca = \"ca.pem\"\n[contexts.b]\naddrs = [\"http://b:1\"]\n",
        )
        .unwrap();
        set_current(&p, "b").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("# mine\ncurrent_context = \"b\"\n"),
            "{text}"
        );
        let cfg = ConfigFile::load(&p).unwrap();
        let (name, c) = cfg.pick(None, &p).unwrap().unwrap();
        assert_eq!((name.as_str(), c.addrs[0].as_str()), ("b", "http://b:1"));
        assert_eq!(
            cfg.contexts["a"].ca.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        let e = set_current(&p, "nope").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("a, b"), "{e}");
    }
}
