//! `ktrail shell`: an interactive SQL shell with psql's habits.
//!
//! Interactive when stdin is a terminal (line editing, history, tab completion); otherwise it
//! reads the script from stdin, which is how the golden-file tests drive it. Both go through
//! [`Shell::feed`], so the tests exercise what a person types.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::output::{self, OutputFormat};

const HELP: &str = r"General
  \q                     quit
  \?                     this help
Query buffer and input
  \i FILE                run the statements in FILE
  \o [FILE]              send results to FILE, or back to stdout
Formatting
  \x [on|off]            expanded output (one line per column)
  \timing [on|off]       show how long each statement took
Informational
  \dt                    list tables and views
  \d [NAME]              describe a table or view (or list them)
  \df[S] [PATTERN]       list ktrail's functions (S: all functions)
Import/export
  \copy (QUERY) TO 'FILE' write the query's result to FILE (.parquet, .csv, .json, .ndjson)
Statements end with ';' and may span lines. Ctrl-C cancels the running statement.
";

/// What the input loop does after a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

pub struct Shell {
    ctx: SessionContext,
    rt: Runtime,
    buffer: String,
    expanded: bool,
    timing: bool,
    /// `\o FILE`: results go there instead of stdout.
    redirect: Option<BufWriter<File>>,
    /// A statement is running; SIGINT cancels it instead of ending the shell.
    running: Arc<AtomicBool>,
    cancel: Arc<Notify>,
    interactive: bool,
    /// Statements that failed (the exit code of a script run).
    pub failures: usize,
}

impl Shell {
    pub fn new(ctx: SessionContext, rt: Runtime, interactive: bool) -> Self {
        let running = Arc::new(AtomicBool::new(false));
        let cancel = Arc::new(Notify::new());
        {
            let (running, cancel) = (running.clone(), cancel.clone());
            rt.spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if running.load(Ordering::SeqCst) {
                        cancel.notify_one();
                    } else if !interactive {
                        // A script with nothing running: Ctrl-C ends it, as it would any filter.
                        std::process::exit(130);
                    }
                }
            });
        }
        Shell {
            ctx,
            rt,
            buffer: String::new(),
            expanded: false,
            timing: false,
            redirect: None,
            running,
            cancel,
            interactive,
            failures: 0,
        }
    }

    pub fn prompt(&self) -> &'static str {
        if self.buffer.trim().is_empty() {
            "ktrail=> "
        } else {
            "ktrail-> "
        }
    }

    /// Whether a statement is being continued (the line goes into the buffer).
    pub fn in_statement(&self) -> bool {
        !self.buffer.trim().is_empty()
    }

    /// Drops a half-typed statement (Ctrl-C at the prompt).
    pub fn reset_buffer(&mut self) {
        self.buffer.clear();
    }

    /// One line of input: a meta-command, or SQL that runs once a `;` ends it.
    pub fn feed(&mut self, line: &str) -> Flow {
        let trimmed = line.trim();
        if !self.in_statement() && trimmed.starts_with('\\') {
            return self.meta(trimmed);
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        while let Some(end) = statement_end(&self.buffer) {
            let statement: String = self.buffer.drain(..end).collect();
            let rest = self.buffer.trim_start().to_string();
            self.buffer = rest;
            self.run_sql(&statement);
        }
        Flow::Continue
    }

    /// End of input: a statement without its `;` still runs, as in psql.
    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.buffer);
        if !rest.trim().is_empty() {
            self.run_sql(&rest);
        }
        self.flush_output();
    }

    fn out(&mut self) -> Box<dyn Write + '_> {
        match &mut self.redirect {
            Some(w) => Box::new(w),
            None => Box::new(std::io::stdout().lock()),
        }
    }

    fn print(&mut self, text: &str) {
        let mut out = self.out();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn flush_output(&mut self) {
        if let Some(w) = &mut self.redirect {
            let _ = w.flush();
        }
    }

    fn error(&mut self, message: &str) {
        self.failures += 1;
        eprintln!("ERROR:  {}", one_line(&readable(message)));
    }

    fn meta(&mut self, line: &str) -> Flow {
        let (cmd, arg) = match line.find(char::is_whitespace) {
            Some(i) => (&line[..i], line[i..].trim()),
            None => (line, ""),
        };
        match cmd {
            "\\q" => return Flow::Quit,
            "\\?" => self.print(HELP),
            "\\x" => match toggle(self.expanded, arg) {
                Some(v) => {
                    self.expanded = v;
                    let state = if v { "on" } else { "off" };
                    self.print(&format!("Expanded display is {state}.\n"));
                }
                None => self.error(&format!("\\x: unrecognized value \"{arg}\": on or off")),
            },
            "\\timing" => match toggle(self.timing, arg) {
                Some(v) => {
                    self.timing = v;
                    let state = if v { "on" } else { "off" };
                    self.print(&format!("Timing is {state}.\n"));
                }
                None => self.error(&format!(
                    "\\timing: unrecognized value \"{arg}\": on or off"
                )),
            },
            "\\o" => {
                self.flush_output();
                self.redirect = None;
                if !arg.is_empty() {
                    match File::create(unquote(arg)) {
                        Ok(f) => self.redirect = Some(BufWriter::new(f)),
                        Err(e) => self.error(&format!("{arg}: {e}")),
                    }
                }
            }
            "\\i" => {
                if arg.is_empty() {
                    self.error("\\i: missing required argument");
                } else {
                    return self.include(Path::new(unquote(arg)));
                }
            }
            "\\dt" => self.run_sql(
                "SELECT table_name AS \"Name\", lower(table_type) AS \"Type\" \
                 FROM information_schema.tables WHERE table_schema = 'public' \
                 ORDER BY table_name",
            ),
            "\\d" if arg.is_empty() => return self.meta("\\dt"),
            "\\d" => self.describe(unquote(arg)),
            "\\df" | "\\dfS" => self.functions(cmd == "\\dfS", arg),
            "\\copy" => self.copy(arg),
            _ => self.error(&format!("invalid command {cmd}; try \\? for help")),
        }
        Flow::Continue
    }

    fn include(&mut self, path: &Path) -> Flow {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.error(&format!("{}: {e}", path.display()));
                return Flow::Continue;
            }
        };
        let outer = std::mem::take(&mut self.buffer);
        for line in text.lines() {
            if self.feed(line) == Flow::Quit {
                return Flow::Quit;
            }
        }
        // A file's last statement needs no `;`.
        let rest = std::mem::replace(&mut self.buffer, outer);
        if !rest.trim().is_empty() {
            self.run_sql(&rest);
        }
        Flow::Continue
    }

    fn describe(&mut self, name: &str) {
        let sql = format!(
            "SELECT column_name AS \"Column\", data_type AS \"Type\", \
             CASE is_nullable WHEN 'YES' THEN '' ELSE 'not null' END AS \"Nullable\" \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{}' ORDER BY ordinal_position",
            name.replace('\'', "''")
        );
        match self.query(&sql) {
            Ok((schema, batches)) if batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0 => {
                let text = format!(
                    "Table or view \"{name}\"\n{}",
                    render(&schema, &batches, self.expanded)
                );
                self.print(&text);
            }
            Ok(_) => self.error(&format!("Did not find any relation named \"{name}\".")),
            Err(e) => self.error(&e.to_string()),
        }
    }

    fn functions(&mut self, all: bool, pattern: &str) {
        let state = self.ctx.state();
        let mut rows: Vec<(String, &str)> = Vec::new();
        rows.extend(
            state
                .scalar_functions()
                .keys()
                .map(|n| (n.clone(), "scalar")),
        );
        rows.extend(
            state
                .aggregate_functions()
                .keys()
                .map(|n| (n.clone(), "aggregate")),
        );
        rows.extend(
            state
                .window_functions()
                .keys()
                .map(|n| (n.clone(), "window")),
        );
        rows.extend(state.table_functions().keys().map(|n| (n.clone(), "table")));
        rows.retain(|(n, _)| {
            (all || query::is_ktrail_function(n)) && (pattern.is_empty() || like(n, pattern))
        });
        rows.sort();
        rows.dedup();
        let values: Vec<String> = rows
            .iter()
            .map(|(n, k)| format!("('{n}', '{k}')"))
            .collect();
        if values.is_empty() {
            self.print("(0 rows)\n");
            return;
        }
        self.run_sql(&format!(
            "SELECT column1 AS \"Name\", column2 AS \"Type\" FROM (VALUES {}) ORDER BY 1",
            values.join(", ")
        ));
    }

    /// `\copy (QUERY) TO 'FILE'`, format from the extension.
    fn copy(&mut self, arg: &str) {
        let Some((query, target)) = parse_copy(arg) else {
            self.error("\\copy: expected \\copy (QUERY) TO 'FILE'");
            return;
        };
        let path = target.to_string();
        let ctx = self.ctx.clone();
        let result = self.cancellable(async move {
            let df = ctx.sql(&query).await?;
            let options = DataFrameWriteOptions::new().with_single_file_output(true);
            let lower = path.to_ascii_lowercase();
            let batches = if lower.ends_with(".parquet") {
                df.write_parquet(&path, options, None).await?
            } else if lower.ends_with(".csv") {
                // As `ktrail sql --format csv` writes it, lists as their JSON text.
                // `DataFrame::write_csv` would take DataFusion's own CSV format, which refuses
                // list columns, not the one the session registers (`query::csv_export`).
                let stream = df.execute_stream().await?;
                let file = File::create(&path)
                    .map_err(|e| DataFusionError::External(format!("{path}: {e}").into()))?;
                let mut out = BufWriter::new(file);
                return output::write(&mut out, OutputFormat::Csv, stream).await;
            } else if lower.ends_with(".json") || lower.ends_with(".ndjson") {
                df.write_json(&path, options, None).await?
            } else {
                return Err(DataFusionError::Plan(format!(
                    "\\copy: {path}: unknown format (use .parquet, .csv, .json or .ndjson)"
                )));
            };
            Ok(copied_rows(&batches))
        });
        match result {
            Ok((rows, elapsed)) => {
                let mut text = format!("COPY {rows}\n");
                if self.timing {
                    text.push_str(&timing_line(elapsed));
                }
                self.print(&text);
            }
            Err(e) => self.error(&e),
        }
    }

    fn run_sql(&mut self, sql: &str) {
        let statements = match DFParser::parse_sql(sql) {
            Ok(s) => s,
            Err(e) => return self.error(&e.to_string()),
        };
        for statement in statements {
            let ctx = self.ctx.clone();
            let progress = self.interactive;
            let result = self.cancellable(async move {
                let plan = ctx.state().statement_to_plan(statement).await?;
                let df = ctx.execute_logical_plan(plan).await?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let mut stream = df.execute_stream().await?;
                let started = Instant::now();
                let mut spinner: Option<Spinner> = None;
                let mut batches = Vec::new();
                let mut rows = 0usize;
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        next = stream.next() => match next {
                            Some(batch) => {
                                let batch = batch?;
                                rows += batch.num_rows();
                                batches.push(batch);
                            }
                            None => break,
                        },
                        _ = tick.tick() => {
                            if progress && started.elapsed() >= Duration::from_secs(1) {
                                let bar = spinner.get_or_insert_with(Spinner::start);
                                bar.0.set_message(format!(
                                    "running {:.1}s, {rows} rows so far (Ctrl-C cancels)",
                                    started.elapsed().as_secs_f64()
                                ));
                                bar.0.tick();
                            }
                        }
                    }
                }
                drop(spinner);
                Ok((schema, batches))
            });
            match result {
                Ok(((schema, batches), elapsed)) => {
                    let mut text = if schema.fields().is_empty() {
                        "OK\n".to_string()
                    } else {
                        render(&schema, &batches, self.expanded)
                    };
                    if self.timing {
                        text.push_str(&timing_line(elapsed));
                    }
                    self.print(&text);
                }
                Err(e) => {
                    self.error(&e);
                    // psql stops a multi-statement line at the first error.
                    return;
                }
            }
        }
    }

    /// Runs `fut` on the shell's runtime; Ctrl-C (SIGINT) drops it, which cancels the query's
    /// tasks. Errors come back as one string.
    fn cancellable<T>(
        &self,
        fut: impl Future<Output = Result<T, DataFusionError>>,
    ) -> Result<(T, Duration), String> {
        let started = Instant::now();
        self.running.store(true, Ordering::SeqCst);
        let cancel = self.cancel.clone();
        let result = self.rt.block_on(async {
            tokio::select! {
                r = fut => r.map_err(|e| e.to_string()),
                _ = cancel.notified() => Err("canceling statement due to user request".to_string()),
            }
        });
        self.running.store(false, Ordering::SeqCst);
        result.map(|v| (v, started.elapsed()))
    }

    /// A plain query for the meta-commands.
    fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let ctx = self.ctx.clone();
        let sql = sql.to_string();
        self.cancellable(async move {
            let df = ctx.sql(&sql).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            Ok((schema, df.collect().await?))
        })
        .map(|(r, _)| r)
    }

    /// Words tab completion offers: SQL keywords, tables and views, their columns, functions
    /// and the meta-commands.
    pub fn completion_words(&self) -> Vec<String> {
        let mut words: Vec<String> = datafusion::sql::sqlparser::keywords::ALL_KEYWORDS
            .iter()
            .map(|k| k.to_string())
            .collect();
        let state = self.ctx.state();
        words.extend(state.scalar_functions().keys().cloned());
        words.extend(state.aggregate_functions().keys().cloned());
        words.extend(state.window_functions().keys().cloned());
        words.extend(state.table_functions().keys().cloned());
        if let Ok((_, batches)) = self.query(
            "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_schema = 'public' \
             UNION SELECT DISTINCT column_name FROM information_schema.columns WHERE table_schema = 'public'",
        ) {
            for b in &batches {
                let col = b.column(0);
                let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default());
                if let Ok(f) = f {
                    words.extend((0..col.len()).map(|i| f.value(i).to_string()));
                }
            }
        }
        words.extend(
            [
                "\\q", "\\?", "\\x", "\\timing", "\\dt", "\\d", "\\df", "\\dfS", "\\o", "\\i",
                "\\copy",
            ]
            .map(String::from),
        );
        words.sort();
        words.dedup();
        words
    }
}

/// The progress line of a long statement; cleared however the statement ends (a cancelled
/// one is dropped mid-way).
struct Spinner(indicatif::ProgressBar);

impl Spinner {
    fn start() -> Self {
        // Ticked by the statement's own timer: no ticker thread to redraw after a cancel clears it.
        Spinner(indicatif::ProgressBar::new_spinner())
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// DataFusion wraps parser errors in Debug formatting; show what the parser said.
fn readable(message: &str) -> String {
    match message
        .strip_prefix("SQL error: ParserError(\"")
        .and_then(|m| m.strip_suffix("\")"))
    {
        Some(inner) => format!("syntax error: {}", inner.replace("\\\"", "\"")),
        None => message.to_string(),
    }
}

fn toggle(current: bool, arg: &str) -> Option<bool> {
    match arg {
        "" => Some(!current),
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// psql's `\df` patterns: `*` any run, `?` one character; otherwise a substring.
fn like(name: &str, pattern: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return name.contains(pattern);
    }
    fn matches(n: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| matches(&n[i..], rest)),
            Some(('?', rest)) => !n.is_empty() && matches(&n[1..], rest),
            Some((c, rest)) => n.first() == Some(c) && matches(&n[1..], rest),
        }
    }
    let n: Vec<char> = name.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    matches(&n, &p)
}

fn timing_line(elapsed: Duration) -> String {
    format!("Time: {:.3} ms\n", elapsed.as_secs_f64() * 1000.0)
}

fn copied_rows(batches: &[RecordBatch]) -> u64 {
    batches
        .first()
        .and_then(|b| {
            let col = b.column(0);
            datafusion::arrow::array::AsArray::as_primitive_opt::<
                datafusion::arrow::datatypes::UInt64Type,
            >(col.as_ref())
            .map(|a| a.value(0))
        })
        .unwrap_or(0)
}

/// Byte offset just past the first `;` outside quotes and comments, if there is one.
pub fn statement_end(sql: &str) -> Option<usize> {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        // A doubled quote is an escaped one.
                        if b.get(i + 1) == Some(&q) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `(QUERY) TO 'FILE'` → (QUERY, FILE).
fn parse_copy(arg: &str) -> Option<(String, String)> {
    let arg = arg.trim();
    let rest = arg.strip_prefix('(')?;
    let mut depth = 1;
    let mut end = None;
    let mut quote: Option<char> = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    end = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let end = end?;
    let query = rest[..end].trim().to_string();
    let tail = rest[end + 1..].trim();
    let (to, file) = tail.split_at(tail.find(char::is_whitespace)?);
    if !to.eq_ignore_ascii_case("to") {
        return None;
    }
    let file = unquote(file.trim().trim_end_matches(';'));
    (!query.is_empty() && !file.is_empty()).then(|| (query, file.to_string()))
}

/// psql's aligned format (header, rule, rows, row count) or, expanded, one block per record.
pub fn render(schema: &SchemaRef, batches: &[RecordBatch], expanded: bool) -> String {
    let options = FormatOptions::default().with_null("");
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let numeric: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().is_numeric())
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        for r in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(r).to_string().replace('\n', "\\n"))
                    .collect(),
            );
        }
    }
    let count = rows.len();
    let footer = format!("({count} row{})\n", if count == 1 { "" } else { "s" });
    let width = |s: &str| s.chars().count();
    let mut out = String::new();
    if expanded {
        if count == 0 {
            return "(0 rows)\n".to_string();
        }
        let name_w = names.iter().map(|n| width(n)).max().unwrap_or(0);
        for (i, row) in rows.iter().enumerate() {
            out.push_str(&format!("-[ RECORD {} ]\n", i + 1));
            for (name, value) in names.iter().zip(row) {
                let line = format!("{name:<name_w$} | {value}");
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        return out;
    }
    let widths: Vec<usize> = (0..names.len())
        .map(|c| {
            rows.iter()
                .map(|r| width(&r[c]))
                .chain([width(names[c])])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut header = String::new();
    let mut rule = String::new();
    for (c, name) in names.iter().enumerate() {
        let w = widths[c];
        if c > 0 {
            header.push('|');
            rule.push('+');
        }
        let pad = w - width(name);
        header.push_str(&format!(
            " {}{}{} ",
            " ".repeat(pad / 2),
            name,
            " ".repeat(pad - pad / 2)
        ));
        rule.push_str(&"-".repeat(w + 2));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for row in &rows {
        let mut line = String::new();
        for (c, value) in row.iter().enumerate() {
            if c > 0 {
                line.push('|');
            }
            let pad = widths[c] - width(value);
            if numeric[c] {
                line.push_str(&format!(" {}{value} ", " ".repeat(pad)));
            } else {
                line.push_str(&format!(" {value}{} ", " ".repeat(pad)));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&footer);
    out
}

/// Tab completion over a fixed word list; a lower-case prefix gets lower-case keywords.
pub fn complete(words: &[String], prefix: &str) -> Vec<String> {
    if prefix.is_empty() {
        return Vec::new();
    }
    let lower = prefix.chars().all(|c| !c.is_ascii_uppercase());
    let mut out: Vec<String> = words
        .iter()
        .filter(|w| w.len() >= prefix.len() && w[..prefix.len()].eq_ignore_ascii_case(prefix))
        .map(|w| {
            if lower && w.chars().all(|c| !c.is_ascii_lowercase()) {
                w.to_ascii_lowercase()
            } else {
                w.clone()
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

mod editor {
    use rustyline::completion::Completer;
    use rustyline::highlight::Highlighter;
    use rustyline::hint::Hinter;
    use rustyline::validate::Validator;
    use rustyline::{Context, Helper};

    pub struct ShellHelper {
        pub words: Vec<String>,
    }

    impl Completer for ShellHelper {
        type Candidate = String;

        fn complete(
            &self,
            line: &str,
            pos: usize,
            _ctx: &Context<'_>,
        ) -> rustyline::Result<(usize, Vec<String>)> {
            let start = line[..pos]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\\'))
                .map_or(0, |i| i + 1);
            Ok((start, super::complete(&self.words, &line[start..pos])))
        }
    }

    impl Hinter for ShellHelper {
        type Hint = String;
    }
    impl Highlighter for ShellHelper {}
    impl Validator for ShellHelper {}
    impl Helper for ShellHelper {}
}

/// Where the history is kept: `$KTRAIL_HISTORY`, else `~/.ktrail_history`.
fn history_path() -> Option<PathBuf> {
    std::env::var_os("KTRAIL_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ktrail_history")))
}

/// Runs the shell until `\q` or end of input. Returns the number of failed statements of a
/// script (an interactive session always ends well).
pub fn run(ctx: SessionContext, rt: Runtime) -> usize {
    let interactive = std::io::stdin().is_terminal();
    let mut shell = Shell::new(ctx, rt, interactive);
    if !interactive {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if shell.feed(&line) == Flow::Quit {
                break;
            }
        }
        shell.finish();
        return shell.failures;
    }
    interactive_loop(&mut shell);
    0
}

fn interactive_loop(shell: &mut Shell) {
    use rustyline::error::ReadlineError;
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .completion_type(rustyline::CompletionType::List)
        .max_history_size(10_000)
        .map(|b| b.build())
        .unwrap_or_default();
    let mut editor = match rustyline::Editor::<editor::ShellHelper, _>::with_history(
        config,
        rustyline::history::FileHistory::new(),
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ERROR:  terminal: {e}");
            return;
        }
    };
    editor.set_helper(Some(editor::ShellHelper {
        words: shell.completion_words(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "ktrail {} — type \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    let mut entry = String::new();
    loop {
        match editor.readline(shell.prompt()) {
            Ok(line) => {
                if !entry.is_empty() {
                    entry.push('\n');
                }
                entry.push_str(&line);
                let flow = shell.feed(&line);
                if !shell.in_statement() {
                    // One history entry per statement or meta-command, however many lines.
                    if !entry.trim().is_empty() {
                        let _ = editor.add_history_entry(entry.as_str());
                        if let Some(h) = &history {
                            let _ = editor.append_history(h);
                        }
                    }
                    entry.clear();
                }
                if flow == Flow::Quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => {
                shell.reset_buffer();
                entry.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("ERROR:  terminal: {e}");
                break;
            }
        }
    }
    shell.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(statement_end("SELECT 1"), None);
        assert_eq!(statement_end("SELECT 1;"), Some(9));
        assert_eq!(statement_end("SELECT ';' ;"), Some(12));
        assert_eq!(statement_end("SELECT 'it''s;' "), None);
        assert_eq!(statement_end("SELECT 1 -- ;\n"), None);
        assert_eq!(statement_end("SELECT /* ; */ 1;"), Some(17));
        assert_eq!(statement_end("SELECT \"a;b\" FROM t;"), Some(20));
    }

    #[test]
    fn copy_arguments() {
        assert_eq!(
            parse_copy("(SELECT f(1, (2)) FROM t WHERE a = ')') TO 'out.parquet'"),
            Some((
                "SELECT f(1, (2)) FROM t WHERE a = ')'".to_string(),
                "out.parquet".to_string()
            ))
        );
        assert_eq!(
            parse_copy("(SELECT 1) to /tmp/x.csv;"),
            Some(("SELECT 1".into(), "/tmp/x.csv".into()))
        );
        assert_eq!(parse_copy("SELECT 1 TO 'x.csv'"), None);
        assert_eq!(parse_copy("(SELECT 1) FROM 'x.csv'"), None);
    }

    #[test]
    fn completion_keeps_the_case_the_user_types() {
        let words: Vec<String> = ["SELECT", "SET", "session_events", "exec_sessions", "\\dt"]
            .map(String::from)
            .into();
        assert_eq!(complete(&words, "se"), ["select", "session_events", "set"]);
        assert_eq!(complete(&words, "SE"), ["SELECT", "SET", "session_events"]);
        assert_eq!(complete(&words, "\\d"), ["\\dt"]);
        assert!(complete(&words, "").is_empty());
    }

    #[test]
    fn function_patterns() {
        assert!(like("cidr_contains", "cidr"));
        assert!(like("json_get_str", "json_*_str"));
        assert!(!like("json_get_int", "json_*_str"));
        assert!(like("exec_trace", "exec_?race"));
    }
}
