//! `keyledger import FILE`: brings keys issued by another system into
//! keyledger by their SHA-256, through `POST /v1/keys/import` of a running
//! server, so it works against any deployment, authenticated like every
//! management call.
//!
//! The file is CSV (a header row naming item fields) or JSON lines (one item
//! object per line, passed through as it is, so new item fields need no
//! change here). A thread reads it into batches; at most [`IN_FLIGHT`]
//! requests are out at once, and each answer's indexes are mapped back to the
//! file's lines. A batch is sent again on connection errors, 429 and 503
//! (importing is idempotent by hash, so that is always safe); any other
//! refusal of a whole request stops the run.
//!
//! The file is hostile input: its lines are bounded ([`MAX_LINE_BYTES`]), a
//! line that cannot be read fails alone (by its number) and never stops the
//! run, and no error quotes a line: line numbers and column names only.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use keyledger_client::{ApiErrorDetail, Client, ImportResponse as Answer};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::audit::terminal_safe;
use crate::error::with_causes;

/// Longest line (or CSV record) read; a longer one fails alone, and only its
/// first bytes are ever held.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest request body sent: the server takes up to 8 MiB, so a batch of
/// large items is cut short rather than refused whole.
const MAX_BODY_BYTES: usize = 4 << 20;
/// Requests out at once.
const IN_FLIGHT: usize = 2;
/// Tries of one batch (connection errors, 429, 503) before giving up.
const MAX_TRIES: u32 = 10;
/// Longest wait between two tries, whatever Retry-After says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// Largest answer read (a thousand ids or errors is far less).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Failures printed on stderr when there is no --errors file.
const SHOWN_FAILURES: u64 = 10;
/// Chunks whose failures may wait for an earlier chunk's answer.
const MAX_HELD_CHUNKS: usize = 16;
/// Longest server message (or column name) printed.
const MAX_SHOWN_CHARS: usize = 200;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV or JSON-lines file of the keys to import; `-` reads standard input.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The file's format [default: from its extension: .csv, or .jsonl,
    /// .ndjson, .json for JSON lines; required for standard input].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The keyledger server to import into.
    #[arg(long, env = "KEYLEDGER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Management token (`keyledger token`). Prefer the environment
    /// variable: a command line is visible to other users of the machine.
    #[arg(long, env = "KEYLEDGER_TOKEN", hide_env_values = true)]
    token: Token,
    /// Keys per request, 1-1000 (fewer when their items are large).
    #[arg(long, value_name = "N", default_value_t = 1000,
        value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
    /// Write each failed line to FILE as a JSON line: {"line": N, "error": {...}}.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A header row naming item fields, then one key per row.
    Csv,
    /// One item object per line.
    Jsonl,
}

/// What stops a run (said on stderr, exit 2).
#[derive(Debug)]
struct Stop(String);

impl Stop {
    /// `source` stopped what `context` says.
    fn because(context: &str, source: impl std::error::Error + 'static) -> Stop {
        Stop(format!("{context}: {}", with_causes(&source)))
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A management token: never shown, not even by `Debug`.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the token is empty".into());
        }
        Ok(Token(s.to_string()))
    }
}

/// How a CSV column's cells become an item's field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The cell's text.
    Text,
    /// Space-separated entries.
    List,
    /// JSON text.
    Json,
}

/// The item fields a CSV header may name.
const FIELDS: [(&str, Kind); 10] = [
    ("hash", Kind::Text),
    ("prefix", Kind::Text),
    ("name", Kind::Text),
    ("description", Kind::Text),
    ("environment", Kind::Text),
    ("permissions", Kind::List),
    ("expires_at", Kind::Text),
    ("metadata", Kind::Json),
    ("created_at", Kind::Text),
    ("allowed_ips", Kind::List),
];

/// The fields no item goes without: a header lacking one is refused before
/// anything is sent.
const REQUIRED: [&str; 3] = ["hash", "prefix", "name"];

/// What counts at the end, and where failures go.
struct Tally {
    /// Lines sent (items in requests out or answered).
    sent: u64,
    /// Items the server answered with an id (re-imports included).
    imported: u64,
    /// Lines that failed, locally or on the server.
    failed: u64,
    /// Reading (and sending) began: the summary is printed.
    started: bool,
    errors: Option<BufWriter<File>>,
    bar: ProgressBar,
    /// Failures of settled chunks, by chunk, held until every earlier chunk
    /// is settled too: failures are told in the file's order.
    held: BTreeMap<u64, Vec<(u64, Value)>>,
    /// The next chunk whose failures are told.
    next_told: u64,
}

impl Tally {
    fn new(bar: ProgressBar) -> Self {
        Self {
            sent: 0,
            imported: 0,
            failed: 0,
            started: false,
            errors: None,
            bar,
            held: BTreeMap::new(),
            next_told: 0,
        }
    }

    /// Takes chunk `seq`'s failures (in line order), and tells those whose
    /// turn has come.
    fn settled(&mut self, seq: u64, failures: Vec<(u64, Value)>) -> Result<(), Stop> {
        self.held.insert(seq, failures);
        while let Some(failures) = self.held.remove(&self.next_told) {
            self.next_told += 1;
            for (line, error) in &failures {
                self.fail(*line, error)?;
            }
        }
        self.refresh();
        Ok(())
    }

    /// Tells every failure held (the run stopped: no earlier chunk will
    /// settle any more).
    fn tell_held(&mut self) -> Result<(), Stop> {
        for (_, failures) in std::mem::take(&mut self.held) {
            for (line, error) in &failures {
                self.fail(*line, error)?;
            }
        }
        Ok(())
    }

    /// Records a failed line: to the --errors file, or (the first few) on stderr.
    fn fail(&mut self, line: u64, error: &Value) -> Result<(), Stop> {
        self.failed += 1;
        match &mut self.errors {
            Some(out) => {
                serde_json::to_writer(&mut *out, &json!({ "line": line, "error": error }))
                    .map_err(|e| Stop(format!("--errors: {e}")))?;
                out.write_all(b"\n")
                    .map_err(|e| Stop(format!("--errors: {e}")))?;
            }
            None if self.failed <= SHOWN_FAILURES => {
                let text = format!("line {line}: {}", describe_error(error));
                self.bar.suspend(|| eprintln!("{text}"));
            }
            None if self.failed == SHOWN_FAILURES + 1 => {
                self.bar.suspend(|| {
                    eprintln!("(more failures not shown: --errors FILE lists them all)")
                });
            }
            None => {}
        }
        Ok(())
    }

    fn refresh(&self) {
        self.bar.set_message(format!(
            "{} lines sent, {} imported, {} failed",
            self.sent, self.imported, self.failed
        ));
    }
}

/// Runs `keyledger import`: exit 0 when every line was imported, 1 when some
/// failed, 2 when the run stopped (the error on stderr).
pub async fn run(args: ImportArgs) -> ExitCode {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::no_length()
    };
    let mut tally = Tally::new(bar);
    let result = import(args, &mut tally).await;
    // Stopped: the failures held for an earlier chunk are told anyway.
    let told = match &result {
        Err(_) => tally.tell_held(),
        Ok(()) => Ok(()),
    };
    let flushed = match tally.errors.as_mut() {
        Some(out) => out.flush().map_err(|e| Stop(format!("--errors: {e}"))),
        None => Ok(()),
    };
    tally.bar.finish_and_clear();
    if tally.started {
        println!("imported {}, failed {}", tally.imported, tally.failed);
    }
    match result.and(told).and(flushed) {
        Err(e) => {
            eprintln!("keyledger import: {e}");
            ExitCode::from(2)
        }
        Ok(()) if tally.failed > 0 => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
    }
}

async fn import(args: ImportArgs, tally: &mut Tally) -> Result<(), Stop> {
    let format = format_of(&args.file, args.format)?;
    let client = connect(&args.url, &args.token)?;
    let (source, size) = open(&args.file)?;
    if let Some(path) = &args.errors {
        let file =
            File::create(path).map_err(|e| Stop(format!("--errors {}: {e}", path.display())))?;
        tally.errors = Some(BufWriter::new(file));
    }
    style_bar(&tally.bar, size)?;

    let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
    let batch = usize::from(args.batch);
    let reading = std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || read_source(source, format, batch, &tx))
        .map_err(|e| Stop::because("the reading thread", e))?;

    let sender = Sender {
        client,
        bar: tally.bar.clone(),
        quiet: args.quiet,
    };
    let mut in_flight: JoinSet<Sent> = JoinSet::new();
    let mut seq = 0;
    while let Some(chunk) = rx.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                // What is out still counts; then the run stops.
                while let Some(done) = in_flight.join_next().await {
                    settle(tally, done)?;
                }
                return Err(e);
            }
        };
        tally.started = true;
        // Room for the chunk: a request slot for its items, and a bound on
        // the failures held for order behind a slow batch.
        while !in_flight.is_empty()
            && ((in_flight.len() >= IN_FLIGHT && !chunk.items.is_empty())
                || tally.held.len() >= MAX_HELD_CHUNKS)
        {
            if let Some(done) = in_flight.join_next().await {
                settle(tally, done)?;
            }
        }
        let this = seq;
        seq += 1;
        tally.bar.set_position(chunk.read_bytes);
        if chunk.items.is_empty() {
            tally.settled(this, chunk.failures)?;
            continue;
        }
        tally.sent += chunk.items.len() as u64;
        tally.refresh();
        let sender = sender.clone();
        in_flight.spawn(async move {
            let answer = sender.send(&chunk.items).await;
            Sent {
                seq: this,
                items: chunk.items,
                failures: chunk.failures,
                answer,
            }
        });
    }
    tally.started = true;
    while let Some(done) = in_flight.join_next().await {
        settle(tally, done)?;
    }
    // The channel closed: the thread has returned (or panicked, and then the
    // end of the file was never reached).
    reading
        .join()
        .map_err(|_| Stop("the reading thread stopped before the end of the file".into()))
}

/// A batch sent, and its answer.
struct Sent {
    /// The chunk's place in the file.
    seq: u64,
    items: Vec<Item>,
    /// The chunk's lines that failed before sending.
    failures: Vec<(u64, Value)>,
    answer: Result<Answer, Stop>,
}

/// Counts a batch's answer: its ids, and its failures (with the chunk's
/// local ones) by line.
fn settle(tally: &mut Tally, done: Result<Sent, tokio::task::JoinError>) -> Result<(), Stop> {
    let sent = done.map_err(|e| Stop::because("a batch's task", e))?;
    let answer = match sent.answer {
        Ok(answer) => answer,
        Err(e) => {
            tally.held.insert(sent.seq, sent.failures);
            return Err(e);
        }
    };
    let outcome = outcome(&sent.items, answer);
    tally.imported += outcome.imported;
    let mut failures = sent.failures;
    failures.extend(outcome.failures);
    failures.sort_by_key(|(line, _)| *line);
    tally.settled(sent.seq, failures)
}

/// The format `--format` names, or the file's extension says.
fn format_of(path: &Path, given: Option<Format>) -> Result<Format, Stop> {
    if let Some(format) = given {
        return Ok(format);
    }
    if path == Path::new("-") {
        return Err(Stop(
            "--format csv or --format jsonl is needed to read standard input".into(),
        ));
    }
    let extension = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl" | "ndjson" | "json") => Ok(Format::Jsonl),
        _ => Err(Stop(format!(
            "{}: cannot tell the format from the file's name: give --format csv or --format jsonl",
            path.display()
        ))),
    }
}

/// The client of the server at `url`, sending `token`.
fn connect(url: &str, token: &Token) -> Result<Client, Stop> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| Stop(format!("--url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Stop("--url: must be http:// or https://".into()));
    }
    Client::builder(url.trim())
        .token(token.0.clone())
        .user_agent(concat!("keyledger-import/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        // A thousand creates; a batch timed out is sent again (idempotent).
        .timeout(Duration::from_secs(300))
        .max_response_bytes(MAX_ANSWER_BYTES)
        .build()
        .map_err(|e| Stop(format!("--url: {e}")))
}

/// Where the lines come from.
enum Source {
    Stdin,
    File(File),
}

/// The file (or stdin) and, for a regular file, its size.
fn open(path: &Path) -> Result<(Source, Option<u64>), Stop> {
    if path == Path::new("-") {
        return Ok((Source::Stdin, None));
    }
    let failed = |e: io::Error| Stop(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if meta.is_dir() {
        return Err(Stop(format!("{}: is a directory", path.display())));
    }
    Ok((Source::File(file), meta.is_file().then_some(meta.len())))
}

/// A bar over the file's bytes (a spinner for a stream), with the counts.
fn style_bar(bar: &ProgressBar, size: Option<u64>) -> Result<(), Stop> {
    let template = match size {
        Some(len) => {
            bar.set_length(len);
            "{bar:30} {percent:>3}%  {msg}  {elapsed} (eta {eta})"
        }
        None => "{spinner} {msg}  {elapsed}",
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .map_err(|e| Stop::because("the progress bar's template", e))?,
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading: bounded lines, then records, then items.

/// A line to send: its number in the file and the item's JSON text.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    line: u64,
    json: String,
}

/// What one record of the file gave.
#[derive(Debug, PartialEq)]
enum Parsed {
    /// An item, as JSON text.
    Item(String),
    /// Nothing to import: a blank line, the header.
    Nothing,
    /// The line fails on its own with this error object.
    Failed(Value),
}

/// A local error object, shaped as the server's.
fn local(code: &str, message: impl Into<String>) -> Value {
    json!({ "code": code, "message": message.into() })
}

/// A local error about one column of a CSV line.
fn local_field(field: &str, message: impl Into<String>) -> Value {
    json!({
        "code": "unreadable_line",
        "message": format!("{field}: {}", message.into()),
        "details": { "field": field },
    })
}

fn too_long_error() -> Value {
    local(
        "line_too_long",
        format!("the line is longer than {MAX_LINE_BYTES} bytes"),
    )
}

/// A file's physical lines, each bounded: of a longer line only the start is
/// held, and it is flagged.
struct Lines<R> {
    inner: R,
    /// The number of the last line read.
    number: u64,
    /// Bytes consumed so far.
    bytes: u64,
}

impl<R: BufRead> Lines<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            number: 0,
            bytes: 0,
        }
    }

    /// Reads the next line into `buf`, without its `\n` or `\r\n` (nor a
    /// UTF-8 byte order mark on line 1): its number, and whether it was
    /// longer than [`MAX_LINE_BYTES`]. `None` at the end.
    fn next(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<(u64, bool)>> {
        buf.clear();
        let mut cut = false;
        let mut any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let (length, ends) = match available.iter().position(|b| *b == b'\n') {
                Some(at) => (at, true),
                None => (available.len(), false),
            };
            // One byte over the bound: room for a `\r` before the `\n`.
            let keep = length.min((MAX_LINE_BYTES + 1).saturating_sub(buf.len()));
            buf.extend_from_slice(&available[..keep]);
            cut |= keep < length;
            let consumed = length + usize::from(ends);
            self.inner.consume(consumed);
            self.bytes += consumed as u64;
            if ends {
                break;
            }
        }
        self.number += 1;
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if self.number == 1 && buf.starts_with(b"\xEF\xBB\xBF") {
            buf.drain(..3);
        }
        let too_long = cut || buf.len() > MAX_LINE_BYTES;
        if too_long {
            buf.clear();
        }
        Ok(Some((self.number, too_long)))
    }
}

/// Where a CSV scan is within a record (the `csv` crate's reading: `"`
/// quotes, `""` inside quotes is a quote, no escape character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    StartOfCell,
    InCell,
    InQuotes,
    /// A `"` inside quotes: the closing one, or the first of `""`.
    ClosingOrDoubled,
}

impl Quote {
    fn scan(mut self, bytes: &[u8]) -> Quote {
        for b in bytes {
            self = match (self, *b) {
                (Quote::StartOfCell, b'"') | (Quote::ClosingOrDoubled, b'"') => Quote::InQuotes,
                (Quote::StartOfCell | Quote::InCell | Quote::ClosingOrDoubled, b',') => {
                    Quote::StartOfCell
                }
                (Quote::StartOfCell | Quote::InCell | Quote::ClosingOrDoubled, _) => Quote::InCell,
                (Quote::InQuotes, b'"') => Quote::ClosingOrDoubled,
                (Quote::InQuotes, _) => Quote::InQuotes,
            };
        }
        self
    }
}

/// The columns of a CSV file, by its header.
#[derive(Debug)]
struct Header {
    columns: Vec<(&'static str, Kind)>,
}

/// A cell of the header or of a line, for a message: escaped and cut short.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(MAX_SHOWN_CHARS).collect();
    let mut shown = terminal_safe(&cut).into_owned();
    if cut.len() < text.len() {
        shown.push_str("...");
    }
    shown
}

/// One CSV record's cells.
fn split_csv(record: &[u8]) -> Result<csv::ByteRecord, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        // Lines were split already: a newline here is inside quotes, and a
        // lone `\r` is a byte of a cell.
        .terminator(csv::Terminator::Any(b'\n'))
        .buffer_capacity(record.len().clamp(64, MAX_LINE_BYTES + 64))
        .from_reader(record);
    let mut cells = csv::ByteRecord::new();
    match reader.read_byte_record(&mut cells) {
        Ok(_) => Ok(cells),
        Err(_) => Err("not a CSV record".into()),
    }
}

impl Header {
    fn parse(record: &[u8]) -> Result<Header, String> {
        let cells = split_csv(record)?;
        let mut columns: Vec<(&'static str, Kind)> = Vec::with_capacity(cells.len());
        for (n, cell) in cells.iter().enumerate() {
            let Ok(name) = std::str::from_utf8(cell).map(str::trim) else {
                return Err(format!("column {} of the header is not UTF-8", n + 1));
            };
            let Some(field) = FIELDS.iter().find(|(f, _)| *f == name) else {
                let known: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
                return Err(format!(
                    "column {} of the header, `{}`, is not an item field (the fields: {})",
                    n + 1,
                    shown(name),
                    known.join(", ")
                ));
            };
            if columns.iter().any(|(c, _)| c == &field.0) {
                return Err(format!("the header names `{}` twice", field.0));
            }
            columns.push(*field);
        }
        for required in REQUIRED {
            if !columns.iter().any(|(c, _)| *c == required) {
                return Err(format!("the header has no `{required}` column"));
            }
        }
        Ok(Header { columns })
    }

    /// The item of a line: empty cells left out, lists split on spaces,
    /// metadata parsed as JSON.
    fn item(&self, record: &[u8]) -> Parsed {
        let cells = match split_csv(record) {
            Ok(cells) => cells,
            Err(message) => return Parsed::Failed(local("unreadable_line", message)),
        };
        if cells.iter().all(|c| c.trim_ascii().is_empty()) {
            return Parsed::Nothing;
        }
        if cells.len() != self.columns.len() {
            return Parsed::Failed(local(
                "unreadable_line",
                format!(
                    "the line has {} cells, the header {}",
                    cells.len(),
                    self.columns.len()
                ),
            ));
        }
        let mut item = Map::new();
        for (cell, (field, kind)) in cells.iter().zip(&self.columns) {
            if cell.is_empty() {
                continue;
            }
            let Ok(text) = std::str::from_utf8(cell) else {
                return Parsed::Failed(local_field(field, "not UTF-8"));
            };
            let value = match kind {
                Kind::Text => Value::String(text.to_string()),
                Kind::List => {
                    let entries: Vec<Value> = text
                        .split_ascii_whitespace()
                        .map(|e| Value::String(e.to_string()))
                        .collect();
                    if entries.is_empty() {
                        continue;
                    }
                    Value::Array(entries)
                }
                Kind::Json => match serde_json::from_str::<Value>(text) {
                    Ok(value) => value,
                    Err(_) => return Parsed::Failed(local_field(field, "not JSON")),
                },
            };
            item.insert((*field).to_string(), value);
        }
        Parsed::Item(Value::Object(item).to_string())
    }
}

/// One JSON line's item: a JSON object, passed through.
fn json_line(text: &[u8]) -> Parsed {
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(item)) => Parsed::Item(Value::Object(item).to_string()),
        Ok(_) => Parsed::Failed(local("unreadable_line", "not a JSON object")),
        // serde's message names what was expected, and a column; say only that.
        Err(e) => Parsed::Failed(local(
            "unreadable_line",
            format!("not JSON (at column {})", e.column()),
        )),
    }
}

/// The records of a file, as items.
struct Reader<R> {
    lines: Lines<R>,
    format: Format,
    /// CSV: the header, once read.
    header: Option<Header>,
    /// JSON lines: a non-blank line was seen.
    started: bool,
    buf: Vec<u8>,
    more: Vec<u8>,
}

impl<R: BufRead> Reader<R> {
    fn new(inner: R, format: Format) -> Self {
        Self {
            lines: Lines::new(inner),
            format,
            header: None,
            started: false,
            buf: Vec::new(),
            more: Vec::new(),
        }
    }

    fn bytes(&self) -> u64 {
        self.lines.bytes
    }

    /// The next record's line and what it gave; `None` at the end. An error
    /// stops the run: the file cannot be read, a CSV header is wrong, or JSON
    /// lines hold a JSON array.
    fn next(&mut self) -> Result<Option<(u64, Parsed)>, Stop> {
        let Some((line, too_long)) = self.lines.next(&mut self.buf).map_err(read_error)? else {
            return Ok(None);
        };
        match self.format {
            Format::Jsonl => {
                if too_long {
                    return Ok(Some((line, Parsed::Failed(too_long_error()))));
                }
                let text = self.buf.trim_ascii();
                if text.is_empty() {
                    return Ok(Some((line, Parsed::Nothing)));
                }
                if !self.started {
                    self.started = true;
                    if text.starts_with(b"[") {
                        return Err(Stop(format!(
                            "line {line}: the file holds a JSON array; import reads JSON lines, one item object per line"
                        )));
                    }
                }
                Ok(Some((line, json_line(text))))
            }
            Format::Csv => {
                let record = if too_long {
                    Err(too_long_error())
                } else {
                    self.csv_record(line)?
                };
                if let Some(header) = &self.header {
                    let parsed = match record {
                        Ok(()) if self.buf.trim_ascii().is_empty() => Parsed::Nothing,
                        Ok(()) => header.item(&self.buf),
                        Err(error) => Parsed::Failed(error),
                    };
                    return Ok(Some((line, parsed)));
                }
                // Blank lines may come before the header, which must be readable.
                if let Err(error) = record {
                    return Err(Stop(format!(
                        "line {line} (the header): {}",
                        error["message"].as_str().unwrap_or("unreadable")
                    )));
                }
                if !self.buf.trim_ascii().is_empty() {
                    let header =
                        Header::parse(&self.buf).map_err(|m| Stop(format!("line {line}: {m}")))?;
                    self.header = Some(header);
                }
                Ok(Some((line, Parsed::Nothing)))
            }
        }
    }

    /// Completes the CSV record begun on `line` (in `buf`): a quoted cell
    /// may hold newlines, so the record runs on while one is open.
    fn csv_record(&mut self, line: u64) -> Result<Result<(), Value>, Stop> {
        let mut quote = Quote::StartOfCell.scan(&self.buf);
        while quote == Quote::InQuotes {
            let Some((last, too_long)) = self.lines.next(&mut self.more).map_err(read_error)?
            else {
                return Ok(Err(local(
                    "unreadable_line",
                    "a quoted cell opened on this line is never closed",
                )));
            };
            if too_long || self.buf.len() + 1 + self.more.len() > MAX_LINE_BYTES {
                return Ok(Err(local(
                    "line_too_long",
                    format!(
                        "a quoted cell opened on this line runs past {MAX_LINE_BYTES} bytes (lines {line}-{last} skipped)"
                    ),
                )));
            }
            self.buf.push(b'\n');
            quote = quote.scan(b"\n").scan(&self.more);
            self.buf.extend_from_slice(&self.more);
        }
        Ok(Ok(()))
    }
}

fn read_error(e: io::Error) -> Stop {
    Stop(format!("reading the file: {e}"))
}

// ---------------------------------------------------------------------------
// Batching.

/// What the reader hands the sender: items to send, lines that failed
/// already, and how far into the file it is.
#[derive(Debug, Default)]
struct Chunk {
    items: Vec<Item>,
    failures: Vec<(u64, Value)>,
    /// Length of the body these items make: `{"keys":[` items `]}`.
    body_bytes: usize,
    read_bytes: u64,
}

/// `{"keys":[` and `]}`.
const ENVELOPE_BYTES: usize = 11;

/// Cuts the records into chunks of at most `max_items` items and
/// `max_bytes` of body (and as many failures).
struct Batcher {
    max_items: usize,
    max_bytes: usize,
    chunk: Chunk,
}

impl Batcher {
    fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            max_items,
            max_bytes,
            chunk: Chunk::default(),
        }
    }

    /// Adds a record; returns the chunks it completed.
    fn push(&mut self, line: u64, parsed: Parsed) -> Vec<Chunk> {
        let mut done = Vec::new();
        match parsed {
            Parsed::Nothing => {}
            Parsed::Failed(error) => {
                self.chunk.failures.push((line, error));
                if self.chunk.failures.len() >= self.max_items {
                    done.push(self.take());
                }
            }
            Parsed::Item(json) => {
                if !self.chunk.items.is_empty()
                    && self.chunk.body_bytes + 1 + json.len() > self.max_bytes
                {
                    done.push(self.take());
                }
                self.chunk.body_bytes = if self.chunk.items.is_empty() {
                    ENVELOPE_BYTES + json.len()
                } else {
                    self.chunk.body_bytes + 1 + json.len()
                };
                self.chunk.items.push(Item { line, json });
                if self.chunk.items.len() >= self.max_items {
                    done.push(self.take());
                }
            }
        }
        done
    }

    /// The last chunk, if it holds anything.
    fn finish(&mut self) -> Option<Chunk> {
        let chunk = self.take();
        (!chunk.items.is_empty() || !chunk.failures.is_empty()).then_some(chunk)
    }

    fn take(&mut self) -> Chunk {
        std::mem::take(&mut self.chunk)
    }
}

/// The reading thread: chunks of the file to `tx` until its end, or the
/// error that stops the run. Ends early when the receiver is gone.
fn read_source(
    source: Source,
    format: Format,
    batch: usize,
    tx: &mpsc::Sender<Result<Chunk, Stop>>,
) {
    let inner: Box<dyn BufRead> = match source {
        Source::Stdin => Box::new(BufReader::with_capacity(256 << 10, io::stdin())),
        Source::File(file) => Box::new(BufReader::with_capacity(256 << 10, file)),
    };
    let mut reader = Reader::new(inner, format);
    let mut batcher = Batcher::new(batch, MAX_BODY_BYTES);
    loop {
        match reader.next() {
            Ok(Some((line, parsed))) => {
                for mut chunk in batcher.push(line, parsed) {
                    chunk.read_bytes = reader.bytes();
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if let Some(mut chunk) = batcher.finish() {
        chunk.read_bytes = reader.bytes();
        let _ = tx.blocking_send(Ok(chunk));
    }
}

// ---------------------------------------------------------------------------
// Sending.

/// A batch's answer by line.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    imported: u64,
    failures: Vec<(u64, Value)>,
}

/// Maps an answer's indexes back to the batch's lines. Each item counts
/// once, by the first word on it; one the answer does not mention fails.
fn outcome(items: &[Item], answer: Answer) -> Outcome {
    let mut answered = vec![false; items.len()];
    let mut outcome = Outcome::default();
    for done in answer.imported {
        if let Some(seen) = answered.get_mut(done.index) {
            if !*seen && !done.id.is_empty() {
                *seen = true;
                outcome.imported += 1;
            }
        }
    }
    for failed in answer.errors {
        if let Some(seen) = answered.get_mut(failed.index) {
            if !*seen {
                *seen = true;
                outcome
                    .failures
                    .push((items[failed.index].line, error_value(&failed.error)));
            }
        }
    }
    for (item, seen) in items.iter().zip(&answered) {
        if !seen {
            outcome.failures.push((
                item.line,
                local(
                    "no_answer",
                    "the server's answer does not mention this line",
                ),
            ));
        }
    }
    outcome.failures.sort_by_key(|(line, _)| *line);
    outcome
}

/// An item's error as the --errors file holds it (the server's shape).
fn error_value(error: &ApiErrorDetail) -> Value {
    let mut value = json!({ "code": error.code.as_str(), "message": error.message });
    if let Some(details) = &error.details {
        value["details"] = details.clone();
    }
    value
}

/// `code: message` of an error object, escaped and cut short.
fn describe_error(error: &Value) -> String {
    let code = error["code"].as_str().unwrap_or("error");
    match error["message"].as_str() {
        Some(message) => format!("{}: {}", shown(code), shown(message)),
        None => shown(code),
    }
}

/// What became of one try.
#[derive(Debug)]
enum Retry {
    /// Worth another try, after this long if the server said.
    Again(String, Option<Duration>),
    /// The run stops.
    Stop(String),
}

/// Whether a whole-request error is worth another try: 429, 503, and a
/// proxy's 502/504 (the server was not reached).
fn transient(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// A Retry-After the server sent, bounded.
fn bounded(after: Option<Duration>) -> Option<Duration> {
    after.map(|after| after.min(MAX_RETRY_WAIT))
}

/// Exponential, from 250 ms to 15 s, with up to a quarter more at random.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(Duration::from_secs(15));
    let jitter = rand::random_range(0.0..0.25);
    base.mul_f64(1.0 + jitter)
}

/// What became of a try that was not answered with an import answer:
/// status, and the API's code and message when it sent them.
fn retry(error: keyledger_client::Error) -> Retry {
    use keyledger_client::Error as E;
    let after = bounded(error.retry_after());
    match error {
        // Without the URL: it is in the user's hands, and may hold a password.
        E::Transport(e) => Retry::Again(with_causes(&e.without_url()), None),
        E::Api {
            status,
            code,
            message,
            ..
        } => {
            let why = if message.is_empty() {
                format!("{status}: {}", shown(code.as_str()))
            } else {
                format!("{status}: {}: {}", shown(code.as_str()), shown(&message))
            };
            if transient(status) {
                Retry::Again(why, after)
            } else {
                Retry::Stop(why)
            }
        }
        E::UnexpectedStatus { status, .. } if transient(status) => {
            Retry::Again(status.to_string(), after)
        }
        E::UnexpectedStatus { status, .. } => Retry::Stop(status.to_string()),
        E::Decode(d) if d.too_large => Retry::Stop(format!(
            "{}: an answer larger than {MAX_ANSWER_BYTES} bytes",
            d.status
        )),
        E::Decode(d) => Retry::Stop(format!(
            "{}, but not an import answer (is --url a keyledger server?)",
            d.status
        )),
        E::Config(m) => Retry::Stop(m),
    }
}

/// Sends batches; clones share one connection pool.
#[derive(Clone)]
struct Sender {
    client: Client,
    bar: ProgressBar,
    quiet: bool,
}

/// The items of a batch as the JSON they are, to send as they are.
fn raw_items(items: &[Item]) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    items
        .iter()
        .map(|item| RawValue::from_string(item.json.clone()))
        .collect()
}

impl Sender {
    /// Sends a batch until it is answered, tried [`MAX_TRIES`] times, or
    /// refused for good.
    async fn send(&self, items: &[Item]) -> Result<Answer, Stop> {
        let lines = match (items.first(), items.last()) {
            (Some(first), Some(last)) => format!("lines {}-{}", first.line, last.line),
            _ => "an empty batch".to_string(),
        };
        // Each item is JSON this program wrote: this cannot fail.
        let raw = raw_items(items).map_err(|e| Stop(format!("{lines}: {e}")))?;
        let mut why = String::new();
        for attempt in 1..=MAX_TRIES {
            let wait = match self.client.import_keys(&raw).await.map_err(retry) {
                Ok(answer) => return Ok(answer),
                Err(Retry::Stop(why)) => {
                    return Err(Stop(format!(
                        "{lines}: the server refused the batch: {why}"
                    )))
                }
                Err(Retry::Again(reason, after)) => {
                    why = reason;
                    after.unwrap_or_else(|| backoff(attempt))
                }
            };
            if attempt < MAX_TRIES {
                if !self.quiet {
                    let note = format!(
                        "keyledger import: {lines}: {why}; trying again in {:.1}s ({attempt} of {MAX_TRIES} tries)",
                        wait.as_secs_f64()
                    );
                    self.bar.suspend(|| eprintln!("{note}"));
                }
                tokio::time::sleep(wait).await;
            }
        }
        Err(Stop(format!(
            "{lines}: gave up after {MAX_TRIES} tries: {why}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record of `input` that gives something, by line.
    fn parse(format: Format, input: &[u8]) -> Result<Vec<(u64, Parsed)>, Stop> {
        let mut reader = Reader::new(input, format);
        let mut out = Vec::new();
        while let Some((line, parsed)) = reader.next()? {
            if parsed != Parsed::Nothing {
                out.push((line, parsed));
            }
        }
        Ok(out)
    }

    fn item(parsed: &Parsed) -> Value {
        match parsed {
            Parsed::Item(json) => serde_json::from_str(json).expect("item JSON"),
            other => panic!("not an item: {other:?}"),
        }
    }

    fn failure(parsed: &Parsed) -> &Value {
        match parsed {
            Parsed::Failed(error) => error,
            other => panic!("not a failure: {other:?}"),
        }
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn csv_lines_become_items_with_lists_split_and_empty_cells_absent() {
        let input = format!(
            "hash,prefix,name,description,environment,permissions,expires_at,metadata,created_at,allowed_ips\n\
             {HASH},sk_live_ab,Billing,,test,keys:read  keys:write,2030-01-01T00:00:00Z,\"{{\"\"team\"\":\"\"ops\"\"}}\",,10.0.0.0/8 192.168.1.1\n\
             {HASH},sk_live_cd,Plain,,,,,,,\n"
        );
        let items = parse(Format::Csv, input.as_bytes()).expect("parsed");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0, 2);
        assert_eq!(
            item(&items[0].1),
            json!({
                "hash": HASH,
                "prefix": "sk_live_ab",
                "name": "Billing",
                "environment": "test",
                "permissions": ["keys:read", "keys:write"],
                "expires_at": "2030-01-01T00:00:00Z",
                "metadata": {"team": "ops"},
                "allowed_ips": ["10.0.0.0/8", "192.168.1.1"],
            })
        );
        assert_eq!(items[1].0, 3);
        assert_eq!(
            item(&items[1].1),
            json!({"hash": HASH, "prefix": "sk_live_cd", "name": "Plain"})
        );
    }

    #[test]
    fn csv_header_may_be_in_any_order_and_blank_rows_are_skipped() {
        let input = format!(
            "\u{feff}name , hash,prefix\r\n\r\nFirst,{HASH},p1\r\n,,\r\n\"Second, quoted\",{HASH},p2\r\n"
        );
        let items = parse(Format::Csv, input.as_bytes()).expect("parsed");
        let lines: Vec<u64> = items.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 5]);
        assert_eq!(item(&items[1].1)["name"], "Second, quoted");
    }

    #[test]
    fn csv_unknown_duplicate_or_missing_columns_are_refused_before_any_item() {
        for (header, expected) in [
            (
                "hash,prefix,name,colour",
                "column 4 of the header, `colour`",
            ),
            ("hash,prefix,name,hash", "names `hash` twice"),
            ("hash,name", "no `prefix` column"),
            ("hash,prefix,name,\"\x1b[2J\"", "`\\u{1b}[2J`"),
        ] {
            let input = format!("{header}\n{HASH},p,n\n");
            let e = parse(Format::Csv, input.as_bytes()).expect_err(header);
            let message = e.to_string();
            assert!(message.starts_with("line 1: "), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn a_bad_csv_line_fails_alone_with_its_line_number() {
        let mut input = format!(
            "hash,prefix,name,metadata\n\
             {HASH},p1,one,\n\
             {HASH},p2,two,{{not json secret}}\n\
             {HASH},p3\n\
             {HASH},p4,"
        )
        .into_bytes();
        input.extend_from_slice(b"\xff\xfe,\n");
        input.extend_from_slice(format!("{HASH},p5,five,{{}}\n").as_bytes());
        let items = parse(Format::Csv, &input).expect("parsed");
        let lines: Vec<u64> = items.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        assert_eq!(item(&items[0].1)["prefix"], "p1");
        let bad_metadata = failure(&items[1].1);
        assert_eq!(bad_metadata["code"], "unreadable_line");
        assert_eq!(bad_metadata["details"]["field"], "metadata");
        assert!(!bad_metadata.to_string().contains("secret"));
        assert!(failure(&items[2].1)["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 cells, the header 4")));
        assert_eq!(failure(&items[3].1)["details"]["field"], "name");
        assert_eq!(item(&items[4].1)["metadata"], json!({}));
    }

    #[test]
    fn a_quoted_csv_cell_may_span_lines() {
        let input = format!(
            "hash,prefix,name,description\n\
             {HASH},p1,one,\"first line\nsecond \"\"line\"\"\"\n\
             {HASH},p2,two,\"say \"\"hi\"\"\nthere\"\n\
             {HASH},p3,three,\"never closed\n\
             {HASH},p4,four,\n"
        );
        let items = parse(Format::Csv, input.as_bytes()).expect("parsed");
        let lines: Vec<u64> = items.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert_eq!(
            item(&items[0].1)["description"],
            "first line\nsecond \"line\""
        );
        assert_eq!(item(&items[1].1)["description"], "say \"hi\"\nthere");
        assert!(failure(&items[2].1)["message"]
            .as_str()
            .is_some_and(|m| m.contains("never closed")));
    }

    #[test]
    fn records_are_split_as_the_csv_crate_splits_a_whole_file() {
        let input = "hash,prefix,name\n\
                     a,b,c\n\
                     \"x\ny\",\"\"\"q\"\"\n\",z\n\
                     \"a\"\"b\",c\"d,\"e,\"\"\nf\"\n\
                     \"\"\"\"\"\",\"\n\n\",last\n";
        let ours: Vec<Value> = parse(Format::Csv, input.as_bytes())
            .expect("parsed")
            .iter()
            .map(|(_, parsed)| item(parsed))
            .collect();
        let theirs: Vec<Value> = csv::Reader::from_reader(input.as_bytes())
            .records()
            .map(|r| {
                let r = r.expect("record");
                json!({"hash": &r[0], "prefix": &r[1], "name": &r[2]})
            })
            .collect();
        assert_eq!(theirs.len(), 4);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_quote_inside_an_unquoted_cell_opens_nothing() {
        let input = format!("hash,prefix,name\n{HASH},p1,a 5\" screen\n{HASH},p2,two\n");
        let items = parse(Format::Csv, input.as_bytes()).expect("parsed");
        assert_eq!(items.len(), 2);
        assert_eq!(item(&items[0].1)["name"], "a 5\" screen");
        assert_eq!(items[1].0, 3);
    }

    #[test]
    fn a_long_line_fails_alone_and_is_neither_kept_nor_quoted() {
        let long = "x".repeat(MAX_LINE_BYTES * 3);
        for format in [Format::Csv, Format::Jsonl] {
            let input = match format {
                Format::Csv => format!("hash,prefix,name\n{HASH},p1,{long}\n{HASH},p2,two\n"),
                Format::Jsonl => format!(
                    "{{\"name\":\"{long}\"}}\n{{\"hash\":\"{HASH}\",\"prefix\":\"p2\",\"name\":\"two\"}}\n"
                ),
            };
            let items = parse(format, input.as_bytes()).expect("parsed");
            assert_eq!(items.len(), 2, "{format:?}");
            let error = failure(&items[0].1);
            assert_eq!(error["code"], "line_too_long");
            assert!(!error.to_string().contains("xxx"));
            let second = items[1].0;
            assert_eq!(item(&items[1].1)["prefix"], "p2", "{format:?}");
            assert_eq!(second, if format == Format::Csv { 3 } else { 2 });
        }
    }

    #[test]
    fn a_quoted_cell_running_past_the_bound_fails_its_record() {
        let chunk = "y".repeat(MAX_LINE_BYTES / 2);
        let input = format!(
            "hash,prefix,name,description\n{HASH},p1,one,\"{chunk}\n{chunk}\n{chunk}\n{HASH},p2,two,\n"
        );
        let items = parse(Format::Csv, input.as_bytes()).expect("parsed");
        assert_eq!(items[0].0, 2);
        assert_eq!(failure(&items[0].1)["code"], "line_too_long");
        assert_eq!(items.last().map(|(l, _)| *l), Some(5));
    }

    #[test]
    fn a_header_line_too_long_stops_the_run() {
        let input = format!("hash,{}\n", "z".repeat(MAX_LINE_BYTES * 2));
        let e = parse(Format::Csv, input.as_bytes()).expect_err("refused");
        assert!(e.to_string().starts_with("line 1 (the header)"), "{e}");
    }

    #[test]
    fn json_lines_pass_through_and_bad_lines_fail_alone() {
        let input = format!(
            "{{\"hash\":\"{HASH}\",\"prefix\":\"p1\",\"name\":\"one\",\"future_field\":[1]}}\n\
             \n   \n\
             {{\"hash\": secret-value\n\
             [1,2]\n\
             \"text\"\n\
             {{\"hash\":\"{HASH}\",\"prefix\":\"p2\",\"name\":\"two\"}}\r\n"
        );
        let items = parse(Format::Jsonl, input.as_bytes()).expect("parsed");
        let lines: Vec<u64> = items.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 4, 5, 6, 7]);
        assert_eq!(item(&items[0].1)["future_field"], json!([1]));
        let not_json = failure(&items[1].1);
        assert!(not_json["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("not JSON")));
        assert!(!not_json.to_string().contains("secret"));
        for (_, parsed) in &items[2..4] {
            assert_eq!(failure(parsed)["message"], "not a JSON object");
        }
        assert_eq!(item(&items[4].1)["prefix"], "p2");
    }

    #[test]
    fn a_json_array_file_is_refused_before_any_item() {
        let e = parse(Format::Jsonl, b"\n[\n  {\"hash\": \"x\"}\n]\n").expect_err("refused");
        assert!(e
            .to_string()
            .contains("line 2: the file holds a JSON array"));
    }

    #[test]
    fn the_format_comes_from_the_flag_or_the_extension() {
        let of = |p: &str, f| format_of(Path::new(p), f);
        assert_eq!(of("keys.CSV", None).ok(), Some(Format::Csv));
        for name in ["keys.jsonl", "keys.ndjson", "keys.json"] {
            assert_eq!(of(name, None).ok(), Some(Format::Jsonl));
        }
        assert_eq!(of("keys.txt", Some(Format::Csv)).ok(), Some(Format::Csv));
        assert!(of("keys.txt", None).is_err());
        assert!(of("-", None)
            .expect_err("stdin needs --format")
            .to_string()
            .contains("--format"));
        assert_eq!(of("-", Some(Format::Jsonl)).ok(), Some(Format::Jsonl));
    }

    #[test]
    fn the_client_is_of_the_url() {
        let token: Token = "the-token".parse().expect("token");
        let url = |u: &str| connect(u, &token).map(|c| c.base_url().to_string());
        assert_eq!(
            url("http://127.0.0.1:8080").ok().as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert_eq!(
            url(" https://keys.example.com/base/ ").ok().as_deref(),
            Some("https://keys.example.com/base/")
        );
        assert!(url("ftp://x").is_err());
        assert!(url("not a url").is_err());
    }

    /// `{"keys":[item,...]}`, as the batcher counts its bytes.
    fn request_body(items: &[Item]) -> Vec<u8> {
        let mut body = b"{\"keys\":[".to_vec();
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item.json.as_bytes());
        }
        body.extend_from_slice(b"]}");
        body
    }

    fn items(lines: &[u64]) -> Vec<Item> {
        lines
            .iter()
            .map(|&line| Item {
                line,
                json: format!("{{\"n\":{line}}}"),
            })
            .collect()
    }

    #[test]
    fn batches_hold_at_most_n_items_and_keep_failures_with_them() {
        let mut batcher = Batcher::new(3, MAX_BODY_BYTES);
        let mut chunks = Vec::new();
        for line in 1..=8 {
            let parsed = match line {
                4 => Parsed::Failed(local("unreadable_line", "bad")),
                5 => Parsed::Nothing,
                _ => Parsed::Item(format!("{{\"n\":{line}}}")),
            };
            chunks.extend(batcher.push(line, parsed));
        }
        chunks.extend(batcher.finish());
        let lines: Vec<Vec<u64>> = chunks
            .iter()
            .map(|c| c.items.iter().map(|i| i.line).collect())
            .collect();
        assert_eq!(lines, [vec![1, 2, 3], vec![6, 7, 8]]);
        assert_eq!(chunks[1].failures.len(), 1);
        assert_eq!(chunks[1].failures[0].0, 4);
        assert!(batcher.finish().is_none());
    }

    #[test]
    fn batches_stay_under_the_body_bound() {
        let json = format!("{{\"name\":\"{}\"}}", "n".repeat(1000));
        let mut batcher = Batcher::new(1000, 4096);
        let mut chunks = Vec::new();
        for line in 1..=10 {
            chunks.extend(batcher.push(line, Parsed::Item(json.clone())));
        }
        chunks.extend(batcher.finish());
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let body = request_body(&chunk.items);
            assert!(body.len() <= 4096, "{}", body.len());
            assert_eq!(body.len(), chunk.body_bytes);
        }
        let sent: usize = chunks.iter().map(|c| c.items.len()).sum();
        assert_eq!(sent, 10);
    }

    #[test]
    fn failures_alone_are_flushed_in_bounded_chunks() {
        let mut batcher = Batcher::new(2, MAX_BODY_BYTES);
        let mut chunks = Vec::new();
        for line in 1..=5 {
            chunks.extend(batcher.push(line, Parsed::Failed(local("x", "y"))));
        }
        chunks.extend(batcher.finish());
        let sizes: Vec<usize> = chunks.iter().map(|c| c.failures.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(chunks.iter().all(|c| c.items.is_empty()));
    }

    #[test]
    fn the_body_sent_is_the_items_in_an_envelope_of_the_counted_size() {
        let items = items(&[3, 9]);
        let raw = raw_items(&items).expect("raw items");
        // What the client sends: the items as they are, in `{"keys": [...]}`.
        let sent = serde_json::to_vec(&json!({ "keys": raw })).expect("body");
        assert_eq!(sent, request_body(&items));
        let value: Value = serde_json::from_slice(&sent).expect("JSON");
        assert_eq!(value, json!({"keys": [{"n": 3}, {"n": 9}]}));
    }

    #[test]
    fn an_answer_maps_back_to_the_lines() {
        let batch = items(&[2, 5, 6, 9]);
        let answer: Answer = serde_json::from_value(json!({
            "imported": [
                {"index": 0, "id": "key_a"},
                {"index": 2, "id": "key_b"},
                {"index": 2, "id": "key_b"},
                {"index": 40, "id": "key_out_of_range"},
            ],
            "errors": [
                {"index": 1, "error": {"code": "validation_failed", "message": "hash: bad", "details": {"field": "hash"}}},
                {"index": 0, "error": {"code": "twice", "message": "already imported above"}},
            ],
        }))
        .expect("answer");
        let outcome = outcome(&batch, answer);
        assert_eq!(outcome.imported, 2);
        let failed: Vec<(u64, &str)> = outcome
            .failures
            .iter()
            .map(|(line, e)| (*line, e["code"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(failed, [(5, "validation_failed"), (9, "no_answer")]);
        assert_eq!(outcome.failures[0].1["details"]["field"], "hash");
    }

    #[test]
    fn whole_request_errors_are_told_apart() {
        for code in [429, 502, 503, 504] {
            assert!(transient(
                reqwest::StatusCode::from_u16(code).expect("status")
            ));
        }
        for code in [400, 401, 403, 413, 422, 500] {
            assert!(!transient(
                reqwest::StatusCode::from_u16(code).expect("status")
            ));
        }
        let refused = |status: u16, code: &str, message: &str| {
            retry(keyledger_client::Error::Api {
                status: reqwest::StatusCode::from_u16(status).expect("status"),
                code: code.into(),
                message: message.into(),
                details: None,
                retry_after: Some(Duration::from_secs(86400)),
                request_id: None,
            })
        };
        match refused(401, "unauthorized", "bad \u{1b}[31m token") {
            Retry::Stop(text) => assert_eq!(
                text,
                "401 Unauthorized: unauthorized: bad \\u{1b}[31m token"
            ),
            other => panic!("{other:?}"),
        }
        match refused(503, "store_unavailable", "later") {
            Retry::Again(text, after) => {
                assert_eq!(text, "503 Service Unavailable: store_unavailable: later");
                assert_eq!(after, Some(MAX_RETRY_WAIT));
            }
            other => panic!("{other:?}"),
        }
        match retry(keyledger_client::Error::UnexpectedStatus {
            status: reqwest::StatusCode::BAD_GATEWAY,
            retry_after: None,
        }) {
            Retry::Again(text, None) => assert_eq!(text, "502 Bad Gateway"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_and_backoff_are_bounded() {
        assert_eq!(bounded(None), None);
        assert_eq!(
            bounded(Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            bounded(Some(Duration::from_secs(86400))),
            Some(MAX_RETRY_WAIT)
        );
        assert!(backoff(1) < Duration::from_millis(320));
        for attempt in 1..=MAX_TRIES {
            assert!(backoff(attempt) <= Duration::from_secs(19));
        }
    }

    #[test]
    fn failures_are_told_in_the_file_order_whatever_order_batches_settle_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("errors.jsonl");
        let mut tally = Tally::new(ProgressBar::hidden());
        tally.errors = Some(BufWriter::new(File::create(&path).expect("create")));
        let failed = |line| (line, local("x", "y"));
        tally.settled(2, vec![failed(9)]).expect("told");
        tally.settled(1, vec![failed(5), failed(6)]).expect("told");
        assert_eq!(tally.failed, 0, "chunk 0 is not settled yet");
        tally.settled(0, vec![failed(2)]).expect("told");
        tally.settled(4, vec![failed(20)]).expect("told");
        assert_eq!(tally.failed, 4);
        tally.tell_held().expect("told");
        drop(tally);
        let lines: Vec<u64> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("JSON");
                v["line"].as_u64().expect("line")
            })
            .collect();
        assert_eq!(lines, [2, 5, 6, 9, 20]);
    }

    /// A server answering the import requests it gets with `answers`, in
    /// turn (the last one again when they run out); counts the requests.
    async fn fake_server(
        answers: Vec<(u16, Option<&'static str>, Value)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let answers = Arc::new(answers);
        let app = axum::Router::new().route(
            "/v1/keys/import",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let answers = answers.clone();
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        assert_eq!(
                            headers.get("authorization").and_then(|v| v.to_str().ok()),
                            Some("Bearer the-token")
                        );
                        let sent: Value = serde_json::from_slice(&body).expect("body");
                        assert!(sent["keys"].is_array());
                        let (status, after, answer) = answers[n.min(answers.len() - 1)].clone();
                        let mut response = (
                            axum::http::StatusCode::from_u16(status).expect("status"),
                            axum::Json(answer),
                        )
                            .into_response();
                        if let Some(after) = after {
                            response
                                .headers_mut()
                                .insert("retry-after", axum::http::HeaderValue::from_static(after));
                        }
                        response
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{address}"), calls)
    }

    fn sender(url: &str) -> Sender {
        Sender {
            client: connect(url, &"the-token".parse().expect("token")).expect("client"),
            bar: ProgressBar::hidden(),
            quiet: true,
        }
    }

    #[tokio::test]
    async fn a_batch_is_sent_again_after_429_and_503_then_mapped_to_its_lines() {
        let busy = json!({"error": {"code": "store_unavailable", "message": "later"}});
        let (url, calls) = fake_server(vec![
            (503, Some("0"), busy.clone()),
            (429, Some("0"), busy),
            (
                200,
                None,
                json!({
                    "imported": [{"index": 1, "id": "key_1"}],
                    "errors": [{"index": 0, "error": {"code": "validation_failed", "message": "hash: bad"}}],
                }),
            ),
        ])
        .await;
        let batch = items(&[4, 7]);
        let answer = sender(&url).send(&batch).await.expect("answered");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        let outcome = outcome(&batch, answer);
        assert_eq!(outcome.imported, 1);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].0, 4);
    }

    #[tokio::test]
    async fn a_refused_request_stops_the_run_at_once() {
        for status in [401, 413, 422] {
            let (url, calls) = fake_server(vec![(
                status,
                None,
                json!({"error": {"code": "refused", "message": "no"}}),
            )])
            .await;
            let e = sender(&url)
                .send(&items(&[1, 2, 3]))
                .await
                .expect_err("refused");
            assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
            let message = e.to_string();
            assert!(message.starts_with("lines 1-3: the server refused the batch: "));
            assert!(message.contains(&status.to_string()), "{message}");
            assert!(message.ends_with("refused: no"), "{message}");
            assert!(!message.contains("the-token"));
        }
    }

    #[test]
    fn a_token_is_never_shown() {
        let token: Token = "eyJ.secret.token".parse().expect("token");
        assert!(!format!("{token:?}").contains("secret"));
        assert!(" ".parse::<Token>().is_err());
    }
}
