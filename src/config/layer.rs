//! Layering the user's TOML over the embedded default: unknown keys and type
//! mismatches are refused by their dotted path before anything is merged, tables merge
//! key by key, and a value error after the merge is traced back to its key.
//!
//! Invariants: works on `toml::Table`s only (no knowledge of the sections: the default
//! file is the schema); every error names the dotted key (`queues.list[0].rate`).

use super::{err, ConfigError};

/// Rejects any key of `user` that `base` lacks, naming it by its dotted path.
pub(super) fn check_known(
    base: &toml::Table,
    user: &toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (k, v) in user {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(b) = base.get(k) else {
            return Err(err(&path, "unknown key"));
        };
        match (b, v) {
            (toml::Value::Table(bt), toml::Value::Table(ut)) => check_known(bt, ut, &path)?,
            (toml::Value::Array(ba), toml::Value::Array(ua)) => {
                if let Some(toml::Value::Table(template)) = ba.first() {
                    for (i, item) in ua.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let toml::Value::Table(it) = item else {
                            return Err(err(&item_path, "must be a table"));
                        };
                        check_known(template, it, &item_path)?;
                    }
                }
            }
            (toml::Value::Table(_), _) => return Err(err(&path, "must be a table")),
            (toml::Value::Float(_), toml::Value::Integer(_)) => {}
            (b, v) if b.type_str() != v.type_str() => {
                return Err(err(
                    &path,
                    format!(
                        "must be {}, not {}",
                        article(b.type_str()),
                        article(v.type_str())
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The dotted key of the `key = value` line holding byte `at` of a TOML text.
pub(super) fn key_at(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let key = line.split('=').next().unwrap_or("").trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// "an integer", "a string", ... for error messages.
fn article(type_str: &str) -> String {
    match type_str.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => format!("an {type_str}"),
        _ => format!("a {type_str}"),
    }
}

/// Lays `user` over `base`: tables merge key by key; any other value replaces.
/// Array-of-table items are laid over the default's first item so they inherit its keys.
pub(super) fn merge(base: &mut toml::Table, user: toml::Table) {
    for (k, v) in user {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(bt)), toml::Value::Table(ut)) => merge(bt, ut),
            (Some(toml::Value::Array(ba)), toml::Value::Array(ua)) => {
                let template = match ba.first() {
                    Some(toml::Value::Table(t)) => Some(t.clone()),
                    _ => None,
                };
                let items = ua
                    .into_iter()
                    .map(|item| match (&template, item) {
                        (Some(t), toml::Value::Table(it)) => {
                            let mut merged = t.clone();
                            merge(&mut merged, it);
                            toml::Value::Table(merged)
                        }
                        (_, other) => other,
                    })
                    .collect();
                *ba = items;
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
