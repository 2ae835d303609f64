//! Falco rules files: `list`, `macro`, `rule`, `required_engine_version`,
//! `required_plugin_versions`, resolved in load order as Falco resolves them — a later
//! definition replaces an earlier one; `override: {key: append|replace}` and the legacy
//! `append: true` change one; an override of something not yet defined is an error.
//! Conditions are parsed into [`Expr`]s once everything is loaded, so macros and lists may be
//! used before they are defined in the file, as Falco allows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::FalcoError;
use crate::condition::{self, Expr, Op};

/// A rule's exception, as Falco declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    pub name: String,
    pub fields: Vec<String>,
    pub comps: Vec<Op>,
    /// One tuple per excepted combination; a value for an `in` / `pmatch` comparison is a
    /// list (kept as its items). Serialised in Falco's own shape ([`Exception::falco_values`]).
    pub values: Vec<Vec<Vec<String>>>,
}

impl Exception {
    /// `values` as a Falco rules file writes them: `[["docker.io/library/postgres", "/bin/sh"]]`,
    /// each value a scalar, except under a comparison that takes a list (`in`, `intersects`,
    /// `pmatch`), where it is the list.
    pub fn falco_values(&self) -> Vec<Vec<Value>> {
        self.values
            .iter()
            .map(|tuple| {
                tuple
                    .iter()
                    .zip(self.comps.iter().chain(std::iter::repeat(&Op::Eq)))
                    .map(|(value, op)| {
                        let takes_list = matches!(op, Op::In | Op::Intersects | Op::Pmatch);
                        match value.as_slice() {
                            [one] if !takes_list => Value::from(one.clone()),
                            // A list under a scalar comparison is not Falco's; kept visible.
                            _ => Value::from(value.clone()),
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

impl serde::Serialize for Exception {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Falco<'a> {
            name: &'a str,
            fields: &'a [String],
            comps: &'a [Op],
            values: Vec<Vec<Value>>,
        }
        Falco {
            name: &self.name,
            fields: &self.fields,
            comps: &self.comps,
            values: self.falco_values(),
        }
        .serialize(s)
    }
}

/// A rule after every override.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub condition: String,
    pub output: String,
    pub desc: String,
    pub priority: String,
    pub tags: Vec<String>,
    pub source: String,
    pub enabled: bool,
    pub exceptions: Vec<Exception>,
    /// The file that last defined or changed it, and the line there.
    pub file: PathBuf,
    pub line: usize,
    /// The parsed condition (after [`Ruleset::compile`]).
    pub expr: Option<Expr>,
}

impl Rule {
    /// The fields its output prints (`%proc.cmdline` → `proc.cmdline`), in order.
    pub fn output_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = self.output.as_str();
        while let Some(i) = rest.find('%') {
            rest = &rest[i + 1..];
            let rest_bytes = rest.as_bytes();
            let mut end = 0;
            let mut depth = 0;
            while end < rest_bytes.len() {
                let b = rest_bytes[end];
                let ok = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_');
                if b == b'[' {
                    depth += 1;
                } else if b == b']' && depth > 0 {
                    depth -= 1;
                    if depth == 0 {
                        end += 1;
                        break;
                    }
                } else if depth == 0 && !ok {
                    break;
                }
                end += 1;
            }
            let f = rest[..end].trim_end_matches('.');
            if !f.is_empty() && !out.iter().any(|x| x == f) {
                out.push(f.to_string());
            }
            rest = &rest[end..];
        }
        out
    }
}

#[derive(Clone, Debug)]
pub struct Macro {
    pub name: String,
    pub condition: String,
    pub file: PathBuf,
    pub line: usize,
    pub expr: Option<Expr>,
}

/// Everything loaded, in definition order.
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    pub lists: BTreeMap<String, Vec<String>>,
    pub macros: BTreeMap<String, Macro>,
    pub rules: Vec<Rule>,
    /// Each file's `required_engine_version` (old files give an integer, new ones semver).
    pub required_engine_versions: Vec<(PathBuf, String)>,
    /// `name` → `version`.
    pub required_plugin_versions: BTreeMap<String, String>,
}

fn err(path: &Path, item: &str, line: usize, reason: impl Into<String>) -> FalcoError {
    FalcoError::Rules {
        path: path.to_path_buf(),
        item: item.to_string(),
        line,
        reason: reason.into(),
    }
}

/// The line where `- kind: name` is defined last in `text` (1-based; 0 when not found).
fn line_of(text: &str, kind: &str, name: &str) -> usize {
    let mut found = 0;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start_matches(['-', ' ']);
        if let Some(rest) = t.strip_prefix(&format!("{kind}:"))
            && rest.trim().trim_matches(['"', '\'']) == name
        {
            found = i + 1;
        }
    }
    found
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(scalar).collect(),
        Value::Null => Vec::new(),
        other => vec![scalar(other)],
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// How an override changes a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Append,
    Replace,
}

impl Ruleset {
    /// Loads the files in order (a later file changes what an earlier one defined).
    pub fn load(paths: &[PathBuf]) -> crate::Result<Ruleset> {
        let mut set = Ruleset::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| FalcoError::Io {
                path: path.clone(),
                source,
            })?;
            set.add_file(path, &text)?;
        }
        set.compile()?;
        Ok(set)
    }

    /// Adds one file's items (call [`Ruleset::compile`] when all are added).
    pub fn add_file(&mut self, path: &Path, text: &str) -> crate::Result<()> {
        let items: Option<Vec<Value>> = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line() as usize);
            let msg = e.without_snippet().to_string();
            err(
                path,
                "file",
                line,
                format!("not valid YAML: {}", msg.lines().next().unwrap_or("")),
            )
        })?;
        for item in items.unwrap_or_default() {
            let Value::Object(map) = &item else {
                return Err(err(
                    path,
                    "file",
                    0,
                    "every item of a rules file is a mapping",
                ));
            };
            if let Some(v) = map.get("required_engine_version") {
                self.required_engine_versions
                    .push((path.to_path_buf(), scalar(v)));
            } else if let Some(v) = map.get("required_plugin_versions") {
                for p in v.as_array().into_iter().flatten() {
                    self.required_plugin_versions
                        .insert(scalar(&p["name"]), scalar(&p["version"]));
                }
            } else if let Some(name) = map.get("list") {
                self.add_list(path, text, &scalar(name), &item)?;
            } else if let Some(name) = map.get("macro") {
                self.add_macro(path, text, &scalar(name), &item)?;
            } else if let Some(name) = map.get("rule") {
                self.add_rule(path, text, &scalar(name), &item)?;
            } else {
                let keys: Vec<&String> = map.keys().collect();
                return Err(err(
                    path,
                    "file",
                    0,
                    format!("unknown item with keys {keys:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The override mode of `key` in `item` (`override: {key: ...}`, or legacy `append`).
    fn mode(
        path: &Path,
        what: &str,
        line: usize,
        item: &Value,
        key: &str,
    ) -> crate::Result<Option<Mode>> {
        if let Some(o) = item.get("override") {
            return match o.get(key).and_then(Value::as_str) {
                Some("append") => Ok(Some(Mode::Append)),
                Some("replace") => Ok(Some(Mode::Replace)),
                Some(other) => Err(err(
                    path,
                    what,
                    line,
                    format!("override {key}: {other:?} is neither append nor replace"),
                )),
                None => Ok(None),
            };
        }
        Ok((item.get("append") == Some(&Value::Bool(true))).then_some(Mode::Append))
    }

    fn is_override(item: &Value) -> bool {
        item.get("override").is_some() || item.get("append") == Some(&Value::Bool(true))
    }

    fn add_list(&mut self, path: &Path, text: &str, name: &str, item: &Value) -> crate::Result<()> {
        let what = format!("list {name}");
        let line = line_of(text, "list", name);
        let items = strings(&item["items"]);
        match Self::mode(path, &what, line, item, "items")? {
            Some(mode) => {
                let Some(existing) = self.lists.get_mut(name) else {
                    return Err(err(
                        path,
                        &what,
                        line,
                        "an override of a list that is not defined",
                    ));
                };
                match mode {
                    Mode::Append => existing.extend(items),
                    Mode::Replace => *existing = items,
                }
            }
            None if Self::is_override(item) => {}
            None => {
                self.lists.insert(name.to_string(), items);
            }
        }
        Ok(())
    }

    fn add_macro(
        &mut self,
        path: &Path,
        text: &str,
        name: &str,
        item: &Value,
    ) -> crate::Result<()> {
        let what = format!("macro {name}");
        let line = line_of(text, "macro", name);
        let condition = scalar(&item["condition"]);
        match Self::mode(path, &what, line, item, "condition")? {
            Some(mode) => {
                let Some(existing) = self.macros.get_mut(name) else {
                    return Err(err(
                        path,
                        &what,
                        line,
                        "an override of a macro that is not defined",
                    ));
                };
                match mode {
                    Mode::Append => {
                        existing.condition = format!("{} {condition}", existing.condition)
                    }
                    Mode::Replace => existing.condition = condition,
                }
                existing.file = path.to_path_buf();
                existing.line = line;
            }
            None if Self::is_override(item) => {}
            None => {
                self.macros.insert(
                    name.to_string(),
                    Macro {
                        name: name.to_string(),
                        condition,
                        file: path.to_path_buf(),
                        line,
                        expr: None,
                    },
                );
            }
        }
        Ok(())
    }

    fn add_rule(&mut self, path: &Path, text: &str, name: &str, item: &Value) -> crate::Result<()> {
        let what = format!("rule {name}");
        let line = line_of(text, "rule", name);
        let exceptions = parse_exceptions(path, &what, line, &item["exceptions"])?;
        let overriding = Self::is_override(item);
        let existing = self.rules.iter().position(|r| r.name == name);
        // `- rule: X` + `enabled: false` alone toggles an existing rule (Falco allows it).
        let only_enabled = item.as_object().is_some_and(|m| {
            m.keys().all(|k| k == "rule" || k == "enabled") && m.contains_key("enabled")
        });
        if overriding || (only_enabled && existing.is_some()) {
            let Some(i) = existing else {
                return Err(err(
                    path,
                    &what,
                    line,
                    "an override of a rule that is not defined",
                ));
            };
            let rule = &mut self.rules[i];
            if only_enabled {
                rule.enabled = item["enabled"].as_bool().unwrap_or(true);
            }
            for key in [
                "condition",
                "output",
                "desc",
                "priority",
                "tags",
                "exceptions",
                "enabled",
                "source",
            ] {
                let Some(mode) = Self::mode(path, &what, line, item, key)? else {
                    continue;
                };
                let value = &item[key];
                if value.is_null() && key != "exceptions" {
                    return Err(err(
                        path,
                        &what,
                        line,
                        format!("override of {key} without a {key}"),
                    ));
                }
                match (key, mode) {
                    ("condition", Mode::Append) => {
                        rule.condition = format!("{} {}", rule.condition, scalar(value))
                    }
                    ("condition", Mode::Replace) => rule.condition = scalar(value),
                    ("output", Mode::Append) => {
                        rule.output = format!("{} {}", rule.output, scalar(value))
                    }
                    ("output", Mode::Replace) => rule.output = scalar(value),
                    ("desc", Mode::Append) => {
                        rule.desc = format!("{} {}", rule.desc, scalar(value))
                    }
                    ("desc", Mode::Replace) => rule.desc = scalar(value),
                    ("tags", Mode::Append) => rule.tags.extend(strings(value)),
                    ("tags", Mode::Replace) => rule.tags = strings(value),
                    ("exceptions", Mode::Append) => {
                        for e in &exceptions {
                            // Appending to a named exception adds its values (Falco's rule).
                            match rule.exceptions.iter_mut().find(|x| x.name == e.name) {
                                Some(x) => x.values.extend(e.values.iter().cloned()),
                                None => rule.exceptions.push(e.clone()),
                            }
                        }
                    }
                    ("exceptions", Mode::Replace) => rule.exceptions = exceptions.clone(),
                    ("priority", Mode::Replace) => rule.priority = scalar(value),
                    ("enabled", Mode::Replace) => rule.enabled = value.as_bool().unwrap_or(true),
                    ("source", Mode::Replace) => rule.source = scalar(value),
                    (k, _) => {
                        return Err(err(
                            path,
                            &what,
                            line,
                            format!("{k} can only be replaced, not appended"),
                        ));
                    }
                }
            }
            rule.file = path.to_path_buf();
            rule.line = line;
            return Ok(());
        }
        for required in ["condition", "output", "priority"] {
            if item.get(required).is_none() {
                return Err(err(path, &what, line, format!("missing `{required}`")));
            }
        }
        let rule = Rule {
            name: name.to_string(),
            condition: scalar(&item["condition"]),
            output: scalar(&item["output"]),
            desc: scalar(&item["desc"]),
            priority: scalar(&item["priority"]),
            tags: strings(&item["tags"]),
            source: item.get("source").map_or("syscall".into(), scalar),
            enabled: item.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            exceptions,
            file: path.to_path_buf(),
            line,
            expr: None,
        };
        match existing {
            Some(i) => self.rules[i] = rule,
            None => self.rules.push(rule),
        }
        Ok(())
    }

    /// Parses every macro's and rule's condition; an error names the file, the rule or
    /// macro, and the offset in its condition. A reference to an undefined macro is an
    /// error in an enabled rule.
    pub fn compile(&mut self) -> crate::Result<()> {
        for m in self.macros.values_mut() {
            let expr = condition::parse(&m.condition).map_err(|e| {
                err(
                    &m.file,
                    &format!("macro {}", m.name),
                    0,
                    format!("condition {e}"),
                )
            })?;
            m.expr = Some(expr);
        }
        for r in &mut self.rules {
            let expr = condition::parse(&r.condition).map_err(|e| {
                err(
                    &r.file,
                    &format!("rule {}", r.name),
                    0,
                    format!("condition {e}"),
                )
            })?;
            if r.enabled {
                let mut used = Vec::new();
                expr.macros(&mut used);
                if let Some(missing) = used.iter().find(|m| !self.macros.contains_key(*m)) {
                    return Err(err(
                        &r.file,
                        &format!("rule {}", r.name),
                        r.line,
                        format!("condition uses undefined macro `{missing}`"),
                    ));
                }
            }
            r.expr = Some(expr);
        }
        Ok(())
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The `user_known_*` macro a rule's condition excludes with `and not ...`, if any: the
    /// ruleset's own hook for local exceptions.
    pub fn user_known_macro(&self, rule: &Rule) -> Option<&str> {
        let mut used = Vec::new();
        rule.expr.as_ref()?.macros(&mut used);
        used.into_iter()
            .find(|m| m.starts_with("user_known_") && self.macros.contains_key(m))
            .and_then(|m| self.macros.get_key_value(&m).map(|(k, _)| k.as_str()))
    }
}

fn parse_exceptions(
    path: &Path,
    what: &str,
    line: usize,
    v: &Value,
) -> crate::Result<Vec<Exception>> {
    let mut out = Vec::new();
    for e in v.as_array().into_iter().flatten() {
        let name = scalar(&e["name"]);
        // `fields: proc.name` (one field) takes scalar values compared with `in`.
        let single = e["fields"].is_string();
        let fields = strings(&e["fields"]);
        let comps: Vec<Op> = match &e["comps"] {
            Value::Null if single => vec![Op::In],
            Value::Null => vec![Op::Eq; fields.len()],
            c => strings(c)
                .iter()
                .map(|c| {
                    Op::parse(c).ok_or_else(|| {
                        err(
                            path,
                            what,
                            line,
                            format!("exception {name}: unknown comparison {c:?}"),
                        )
                    })
                })
                .collect::<crate::Result<_>>()?,
        };
        if comps.len() != fields.len() {
            return Err(err(
                path,
                what,
                line,
                format!(
                    "exception {name}: {} fields but {} comps",
                    fields.len(),
                    comps.len()
                ),
            ));
        }
        let mut values = Vec::new();
        for tuple in e["values"].as_array().into_iter().flatten() {
            let tuple: Vec<Vec<String>> = if single {
                vec![strings(tuple)]
            } else {
                let items = tuple.as_array().cloned().unwrap_or_default();
                if items.len() != fields.len() {
                    return Err(err(
                        path,
                        what,
                        line,
                        format!(
                            "exception {name}: a value tuple of {} for {} fields",
                            items.len(),
                            fields.len()
                        ),
                    ));
                }
                items.iter().map(strings).collect()
            };
            values.push(tuple);
        }
        out.push(Exception {
            name,
            fields,
            comps,
            values,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON (`falco tune --format json`) and YAML (`-o`) carry an exception as Falco does: a
    /// value is a scalar, a list only under a list comparison.
    #[test]
    fn exceptions_serialise_in_falcos_shape() {
        let e = Exception {
            name: "known_shells".into(),
            fields: vec!["container.image.repository".into(), "proc.name".into()],
            comps: vec![Op::Eq, Op::In],
            values: vec![vec![
                vec!["docker.io/library/postgres".into()],
                vec!["sh".into(), "bash".into()],
            ]],
        };
        let want = serde_json::json!({
            "name": "known_shells",
            "fields": ["container.image.repository", "proc.name"],
            "comps": ["=", "in"],
            "values": [["docker.io/library/postgres", ["sh", "bash"]]],
        });
        assert_eq!(serde_json::to_value(&e).unwrap(), want);
        let one = Exception {
            comps: vec![Op::Eq, Op::Eq],
            values: vec![vec![
                vec!["docker.io/library/postgres".into()],
                vec!["/bin/sh".into()],
            ]],
            ..e
        };
        assert_eq!(
            serde_json::to_value(&one).unwrap()["values"],
            serde_json::json!([["docker.io/library/postgres", "/bin/sh"]])
        );
        let yaml = serde_saphyr::to_string(&one).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            back["values"],
            serde_json::json!([["docker.io/library/postgres", "/bin/sh"]])
        );
    }

    const SAMPLES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/samples/falco-rules"
    );

    fn sample(name: &str) -> PathBuf {
        Path::new(SAMPLES).join(name)
    }

    /// All four real rulesets load and compile, alone (each is self-contained) and together.
    #[test]
    fn the_sample_rulesets_load() {
        let counts = [
            ("falco_rules.yaml", 49, 87, 25),
            ("falco-incubating_rules.yaml", 54, 82, 31),
            // 183: one macro is written `- condition: ...` then `macro: ...`.
            ("falco-sandbox_rules.yaml", 60, 183, 37),
            ("k8s_audit_rules.yaml", 18, 45, 48),
        ];
        for (file, lists, macros, rules) in counts {
            let set = Ruleset::load(&[sample(file)]).unwrap();
            assert_eq!(
                (set.lists.len(), set.macros.len(), set.rules.len()),
                (lists, macros, rules),
                "{file}"
            );
            assert!(set.rules.iter().all(|r| r.expr.is_some()));
        }
        let all: Vec<PathBuf> = counts.iter().map(|c| sample(c.0)).collect();
        let set = Ruleset::load(&all).unwrap();
        let versions: Vec<&str> = set
            .required_engine_versions
            .iter()
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(versions, vec!["0.57.0", "0.57.0", "0.57.0", "15"]);
        let sandbox = Ruleset::load(&[sample("falco-sandbox_rules.yaml")]).unwrap();
        assert_eq!(sandbox.rules.iter().filter(|r| !r.enabled).count(), 12);
        let k8s = set.rule("Contact K8S API Server From Container").unwrap();
        assert_eq!(
            set.user_known_macro(k8s),
            Some("user_known_contact_k8s_api_server_activities")
        );
        assert!(k8s.output_fields().contains(&"proc.exepath".to_string()));
    }

    fn load_text(files: &[(&str, &str)]) -> crate::Result<Ruleset> {
        let mut set = Ruleset::default();
        for (name, text) in files {
            set.add_file(Path::new(name), text)?;
        }
        set.compile()?;
        Ok(set)
    }

    #[test]
    fn overrides_resolve_in_load_order() {
        let base = "- list: shells\n  items: [bash, sh]\n- macro: spawned\n  condition: evt.type = execve\n\
                    - rule: Shell\n  desc: d\n  condition: spawned and proc.name in (shells)\n  output: o %proc.name\n  priority: WARNING\n";
        let local = "- list: shells\n  items: [zsh]\n  override: {items: append}\n\
                     - macro: spawned\n  condition: and proc.tty != 0\n  append: true\n\
                     - rule: Shell\n  exceptions:\n  - name: ci\n    fields: [proc.pname, proc.exepath]\n    \
                     comps: [=, startswith]\n    values: [[runner, /usr/bin/]]\n  override: {exceptions: append}\n\
                     - rule: Shell\n  priority: NOTICE\n  override: {priority: replace}\n";
        let set = load_text(&[("base.yaml", base), ("local.yaml", local)]).unwrap();
        assert_eq!(set.lists["shells"], vec!["bash", "sh", "zsh"]);
        assert_eq!(
            set.macros["spawned"].condition,
            "evt.type = execve and proc.tty != 0"
        );
        let r = set.rule("Shell").unwrap();
        assert_eq!(r.priority, "NOTICE");
        assert_eq!(r.exceptions[0].comps, vec![Op::Eq, Op::Startswith]);
        assert_eq!(r.file, Path::new("local.yaml"));

        let e = load_text(&[(
            "x.yaml",
            "- rule: Nope\n  condition: a\n  override: {condition: append}\n",
        )])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("x.yaml:1: rule Nope: an override of a rule that is not defined"),
            "{e}"
        );
        let bad = "- rule: Bad\n  desc: d\n  condition: proc.name in bash\n  output: o\n  priority: INFO\n";
        let e = load_text(&[("b.yaml", bad)]).unwrap_err();
        assert!(
            e.to_string().contains("rule Bad: condition at offset 13"),
            "{e}"
        );
        let e = load_text(&[(
            "c.yaml",
            "- rule: Bad\n  desc: d\n  condition: ghost_macro\n  output: o\n  priority: INFO\n",
        )])
        .unwrap_err();
        assert!(
            e.to_string().contains("undefined macro `ghost_macro`"),
            "{e}"
        );
    }
}
