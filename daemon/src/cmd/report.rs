//! `report <view>` and `export`: the local store read back, for people.
//!
//! Both open `<data_dir>/sessions.db` read-only (`sink::store::open_read`), so they work
//! while the daemon runs and create nothing when there is no store yet (a clear error, exit 1).
//!
//! # What is counted
//! Every figure is the store's counted one ([`crate::sink::store::counted`], the deployment's
//! rule): a top-level session counts itself and its subagents (its rollup), minus what a fork
//! inherited; a subagent stored as its own row counts nothing. So totals count each fork's
//! copied history and each subagent exactly once. A session counts, whole, in the bucket of its
//! `createdAt` (in `--timezone`), like the deployment's daily totals. `sessions` counts
//! top-level sessions; `subagents` the subagent sessions inside them.
//!
//! # Views
//! - `daily`, `weekly` (weeks start on Monday, keyed by that date), `monthly`: one row per
//!   bucket, oldest first;
//! - `session`: one row per top-level session, oldest first;
//! - `project` (working directory), `device` (host name): one row each, by cost;
//! - `model` (`provider/model`), `agent`: the per-model and per-agent split of the same
//!   figures (an agent's row: the primary agent's own spend and each subagent's), by cost;
//! - `tool`, `skill`: calls, failed calls and time spent, by calls.
//!
//! `--breakdown` adds the per-model split inside each row of the time, session, project and
//! device views (tables and JSON; CSV stays one row per key).
//!
//! # `--json` (stable; documented in the README)
//! An array, one object per row, keyed by the view's dimension: `date` (`YYYY-MM-DD`),
//! `week` (its Monday, `YYYY-MM-DD`), `month` (`YYYY-MM`), `source` + `sessionId`, `project`,
//! `device` (+ `deviceId`), `provider` + `model`, `agent`, `tool`, `skill`; then `sessions`,
//! `subagents`, `messages`, `cost` (USD), `tokens {input, output, reasoning, cacheRead,
//! cacheWrite, total}`, `errors` (turns ended in an error), `errorNames {name: turns}`,
//! `todos {total, completed}`, `codeChanges {additions, deletions}`; tool and skill rows:
//! `sessions`, `calls`, `errors`, `durationMs`.

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use comfy_table::{presets, Attribute, Cell, CellAlignment, ContentArrangement, Table};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::sink::store::counted::{Figures, Tokens};
use crate::sink::store::query::{Filter, Reader, SessionRef, ToolKind};

/// A report view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// One row per day.
    Daily,
    /// One row per week (Monday to Sunday).
    Weekly,
    /// One row per month.
    Monthly,
    /// One row per top-level session.
    Session,
    /// One row per project (working directory).
    Project,
    /// One row per provider/model.
    Model,
    /// One row per agent.
    Agent,
    /// One row per tool.
    Tool,
    /// One row per skill.
    Skill,
    /// One row per device (host name).
    Device,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Table,
    /// A JSON array.
    Json,
    /// CSV with a header line.
    Csv,
}

/// Which sessions, in which time zone.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// First day (`YYYY-MM-DD`, in the time zone), inclusive.
    pub since: Option<String>,
    /// Last day (`YYYY-MM-DD`, in the time zone), inclusive.
    pub until: Option<String>,
    /// IANA name (`Europe/Paris`, `UTC`); default: the system's.
    pub timezone: Option<String>,
    /// Only this source (`opencode`).
    pub source: Option<String>,
    /// Only this project (directory, its last component, or project id).
    pub project: Option<String>,
}

impl Scope {
    /// The time zone and the store filter.
    ///
    /// # Errors
    /// An unknown time zone or a date that is not `YYYY-MM-DD`.
    fn resolve(&self) -> anyhow::Result<(TimeZone, Filter)> {
        let tz = match &self.timezone {
            None => TimeZone::system(),
            Some(name) => TimeZone::get(name)
                .with_context(|| format!("--timezone {name:?} is not a known time zone"))?,
        };
        let day_start = |flag: &str, s: &str, plus_days: i64| -> anyhow::Result<i64> {
            let d: Date = s
                .parse()
                .with_context(|| format!("{flag} {s:?} is not a date (YYYY-MM-DD)"))?;
            let d = d
                .checked_add(jiff::Span::new().days(plus_days))
                .with_context(|| format!("{flag} {s:?} is out of range"))?;
            Ok(d.to_zoned(tz.clone())
                .with_context(|| format!("{flag} {s:?} is out of range"))?
                .timestamp()
                .as_millisecond())
        };
        let filter = Filter {
            since_ms: self
                .since
                .as_deref()
                .map(|s| day_start("--since", s, 0))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|s| day_start("--until", s, 1))
                .transpose()?,
            source: self.source.clone(),
            project: self.project.clone(),
        };
        Ok((tz, filter))
    }
}

/// What one group of counted sessions adds up to.
#[derive(Debug, Clone, Default)]
struct Totals {
    sessions: i64,
    subagents: i64,
    figures: Figures,
    errors: i64,
    error_names: BTreeMap<String, i64>,
    todos_total: i64,
    todos_completed: i64,
    additions: i64,
    deletions: i64,
    /// Per `provider/model` (with `--breakdown`).
    models: BTreeMap<String, Figures>,
}

fn add_figures(into: &mut Figures, f: &Figures) {
    into.messages += f.messages;
    into.cost += f.cost;
    let t = &mut into.tokens;
    t.input += f.tokens.input;
    t.output += f.tokens.output;
    t.reasoning += f.tokens.reasoning;
    t.cache_read += f.tokens.cache_read;
    t.cache_write += f.tokens.cache_write;
}

fn total_tokens(t: &Tokens) -> i64 {
    t.input + t.output + t.reasoning + t.cache_read + t.cache_write
}

/// Tool or skill usage of one group.
#[derive(Debug, Clone, Default)]
struct ToolTotals {
    sessions: i64,
    calls: i64,
    errors: i64,
    duration_ms: i64,
}

/// A row of the session view: what identifies it besides its totals.
#[derive(Debug, Clone)]
struct SessionInfo {
    title: String,
    duration_ms: Option<i64>,
}

/// `report <view>`: prints the view.
///
/// # Errors
/// A bad flag value, no store yet, a store of another schema version, SQLite errors.
pub fn report(
    config: &Config,
    view: View,
    scope: &Scope,
    breakdown: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let out = report_text(&config.data_dir, view, scope, breakdown, format, style())?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The text `report` prints for the store in `data_dir` (`styled`: colour and the terminal's
/// width). What `cargo bench --bench report` times.
///
/// # Errors
/// As [`report`].
pub fn report_text(
    data_dir: &std::path::Path,
    view: View,
    scope: &Scope,
    breakdown: bool,
    format: Format,
    styled: bool,
) -> anyhow::Result<String> {
    let (tz, filter) = scope.resolve()?;
    let reader = crate::sink::store::open_read(data_dir)?;
    render(&reader, view, &tz, &filter, breakdown, format, styled)
}

/// Whether tables may use colour and the terminal's width: as `--color` says for stdout
/// ([`crate::color`]: by default, a terminal and `NO_COLOR` unset or empty).
fn style() -> bool {
    crate::color::wanted(std::io::stdout().is_terminal())
}

/// The bucket of a session in a time view.
fn bucket(view: View, tz: &TimeZone, ms: i64) -> String {
    let Ok(ts) = Timestamp::from_millisecond(ms) else {
        return "?".into();
    };
    let date = ts.to_zoned(tz.clone()).date();
    match view {
        View::Weekly => {
            let back = i64::from(date.weekday().to_monday_zero_offset());
            date.checked_sub(jiff::Span::new().days(back))
                .unwrap_or(date)
                .to_string()
        }
        View::Monthly => format!("{:04}-{:02}", date.year(), date.month()),
        _ => date.to_string(),
    }
}

/// The key of a session's group in a per-session-row view.
fn group_key(view: View, tz: &TimeZone, at: &SessionRef) -> String {
    match view {
        View::Daily | View::Weekly | View::Monthly => bucket(view, tz, at.created_at),
        View::Session => format!(
            "{:020}\u{0}{}\u{0}{}",
            at.created_at, at.source, at.session_id
        ),
        View::Project => at.project_directory.clone(),
        View::Device => format!("{}\u{0}{}", at.hostname, at.device_id),
        View::Model | View::Agent | View::Tool | View::Skill => String::new(),
    }
}

/// The report as text (a table, JSON or CSV).
fn render(
    reader: &Reader,
    view: View,
    tz: &TimeZone,
    filter: &Filter,
    breakdown: bool,
    format: Format,
    styled: bool,
) -> anyhow::Result<String> {
    match view {
        View::Model | View::Agent => {
            let mut groups: BTreeMap<String, (HashSet<String>, Figures)> = BTreeMap::new();
            let mut add = |row: crate::sink::store::query::DimensionRow| {
                let g = groups.entry(row.key).or_default();
                g.0.insert(format!("{}\u{0}{}", row.at.source, row.at.session_id));
                add_figures(&mut g.1, &row.figures);
            };
            if view == View::Model {
                reader.models(filter, &mut add)?;
            } else {
                reader.agents(filter, &mut add)?;
            }
            let total_sessions = reader.count(filter)? as i64;
            let mut rows: Vec<(String, i64, Figures)> = groups
                .into_iter()
                .map(|(k, (s, f))| (k, s.len() as i64, f))
                .collect();
            rows.sort_by(|a, b| b.2.cost.total_cmp(&a.2.cost).then(a.0.cmp(&b.0)));
            Ok(render_dimension(
                view,
                &rows,
                total_sessions,
                format,
                styled,
            ))
        }
        View::Tool | View::Skill => {
            let kind = if view == View::Tool {
                ToolKind::Tool
            } else {
                ToolKind::Skill
            };
            let mut groups: BTreeMap<String, ToolTotals> = BTreeMap::new();
            reader.tools(filter, kind, |row| {
                let g = groups.entry(row.name).or_default();
                g.sessions += 1;
                g.calls += row.calls;
                g.errors += row.errors;
                g.duration_ms += row.duration_ms;
            })?;
            let mut rows: Vec<(String, ToolTotals)> = groups.into_iter().collect();
            rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(&b.0)));
            Ok(render_tools(view, &rows, format, styled))
        }
        _ => {
            let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
            let mut infos: BTreeMap<String, (SessionRef, SessionInfo)> = BTreeMap::new();
            reader.sessions(filter, |s| {
                let key = group_key(view, tz, &s.at);
                let g = groups.entry(key.clone()).or_default();
                g.sessions += 1;
                g.subagents += (s.sessions - 1).max(0);
                add_figures(&mut g.figures, &s.figures);
                g.errors += s.errors;
                g.todos_total += s.todos_total;
                g.todos_completed += s.todos_completed;
                g.additions += s.code_additions;
                g.deletions += s.code_deletions;
                if view == View::Session || view == View::Device {
                    infos.entry(key).or_insert_with(|| {
                        (
                            s.at.clone(),
                            SessionInfo {
                                title: s.title.clone(),
                                duration_ms: s.duration_ms,
                            },
                        )
                    });
                }
            })?;
            reader.errors(filter, |e| {
                let key = group_key(view, tz, &e.at);
                if let Some(g) = groups.get_mut(&key) {
                    *g.error_names.entry(e.name).or_default() += e.turns;
                }
            })?;
            if breakdown {
                reader.models(filter, |m| {
                    let key = group_key(view, tz, &m.at);
                    if let Some(g) = groups.get_mut(&key) {
                        add_figures(g.models.entry(m.key).or_default(), &m.figures);
                    }
                })?;
            }
            let mut rows: Vec<(String, Totals)> = groups.into_iter().collect();
            if matches!(view, View::Project | View::Device) {
                rows.sort_by(|a, b| {
                    b.1.figures
                        .cost
                        .total_cmp(&a.1.figures.cost)
                        .then(a.0.cmp(&b.0))
                });
            }
            Ok(render_totals(
                view, tz, &rows, &infos, breakdown, format, styled,
            ))
        }
    }
}

/// A cost for JSON: rounded to 10 decimals, so sums of binary fractions print as the
/// decimal they are (`0.09472`, not `0.09472000000000001`).
fn cost_json(cost: f64) -> Value {
    json!((cost * 1e10).round() / 1e10)
}

fn tokens_json(t: &Tokens) -> Value {
    json!({
        "input": t.input,
        "output": t.output,
        "reasoning": t.reasoning,
        "cacheRead": t.cache_read,
        "cacheWrite": t.cache_write,
        "total": total_tokens(t),
    })
}

fn models_json(models: &BTreeMap<String, Figures>) -> Value {
    Value::Array(
        sorted_models(models)
            .into_iter()
            .map(|(k, f)| {
                let (provider, model) = k.split_once('/').unwrap_or(("", k));
                json!({
                    "provider": provider,
                    "model": model,
                    "messages": f.messages,
                    "cost": cost_json(f.cost),
                    "tokens": tokens_json(&f.tokens),
                })
            })
            .collect(),
    )
}

fn sorted_models(models: &BTreeMap<String, Figures>) -> Vec<(&String, &Figures)> {
    let mut v: Vec<_> = models.iter().collect();
    v.sort_by(|a, b| b.1.cost.total_cmp(&a.1.cost).then(a.0.cmp(b.0)));
    v
}

/// The key columns of a row of a per-session-row view, as (JSON members, table cells).
fn key_of(
    view: View,
    tz: &TimeZone,
    key: &str,
    info: Option<&(SessionRef, SessionInfo)>,
) -> (Vec<(&'static str, Value)>, Vec<String>) {
    match view {
        View::Daily => (vec![("date", json!(key))], vec![key.to_string()]),
        View::Weekly => (vec![("week", json!(key))], vec![key.to_string()]),
        View::Monthly => (vec![("month", json!(key))], vec![key.to_string()]),
        View::Project => (vec![("project", json!(key))], vec![key.to_string()]),
        View::Device => {
            let (host, id) = key.split_once('\u{0}').unwrap_or((key, ""));
            (
                vec![("device", json!(host)), ("deviceId", json!(id))],
                vec![host.to_string()],
            )
        }
        View::Session => {
            let Some((at, i)) = info else {
                return (Vec::new(), vec![String::new(); 3]);
            };
            let created = Timestamp::from_millisecond(at.created_at)
                .map(|t| {
                    t.to_zoned(tz.clone())
                        .strftime("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_default();
            (
                vec![
                    ("source", json!(at.source)),
                    ("sessionId", json!(at.session_id)),
                    ("date", json!(created.get(..10).unwrap_or(""))),
                    ("createdAt", json!(at.created_at)),
                    ("title", json!(i.title)),
                    ("project", json!(at.project_directory)),
                    ("device", json!(at.hostname)),
                    ("durationMs", json!(i.duration_ms)),
                ],
                vec![created, at.session_id.clone(), i.title.clone()],
            )
        }
        _ => (Vec::new(), Vec::new()),
    }
}

/// Thousands separators: `1234567` → `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `$0.0947`: US dollars to four decimals (OpenCode's costs are often fractions of a cent).
fn dollars(cost: f64) -> String {
    format!("${cost:.4}")
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn new_table(styled: bool, header: &[&str], right_from: usize) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    if styled {
        table.set_content_arrangement(ContentArrangement::Dynamic);
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    table.set_header(header.iter().map(|h| {
        let c = Cell::new(h);
        if styled {
            c.add_attribute(Attribute::Bold)
        } else {
            c
        }
    }));
    for i in right_from..header.len() {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn token_cells(t: &Tokens) -> Vec<String> {
    vec![
        thousands(t.input),
        thousands(t.output),
        thousands(t.reasoning),
        thousands(t.cache_read),
        thousands(t.cache_write),
        thousands(total_tokens(t)),
    ]
}

fn csv_line(out: &mut csv::Writer<Vec<u8>>, cells: &[String]) {
    // Writing to memory cannot fail.
    let _ = out.write_record(cells);
}

fn csv_text(out: csv::Writer<Vec<u8>>) -> String {
    String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn render_totals(
    view: View,
    tz: &TimeZone,
    rows: &[(String, Totals)],
    infos: &BTreeMap<String, (SessionRef, SessionInfo)>,
    breakdown: bool,
    format: Format,
    styled: bool,
) -> String {
    match format {
        Format::Json => {
            let arr: Vec<Value> = rows
                .iter()
                .map(|(k, t)| {
                    let mut m = Map::new();
                    for (name, v) in key_of(view, tz, k, infos.get(k)).0 {
                        m.insert(name.into(), v);
                    }
                    m.insert("sessions".into(), json!(t.sessions));
                    m.insert("subagents".into(), json!(t.subagents));
                    m.insert("messages".into(), json!(t.figures.messages));
                    m.insert("cost".into(), cost_json(t.figures.cost));
                    m.insert("tokens".into(), tokens_json(&t.figures.tokens));
                    m.insert("errors".into(), json!(t.errors));
                    m.insert("errorNames".into(), json!(t.error_names));
                    m.insert(
                        "todos".into(),
                        json!({"total": t.todos_total, "completed": t.todos_completed}),
                    );
                    m.insert(
                        "codeChanges".into(),
                        json!({"additions": t.additions, "deletions": t.deletions}),
                    );
                    if breakdown {
                        m.insert("models".into(), models_json(&t.models));
                    }
                    Value::Object(m)
                })
                .collect();
            format!("{}\n", Value::Array(arr))
        }
        Format::Csv => {
            let mut out = csv::Writer::from_writer(Vec::new());
            let key_names: Vec<&str> = match view {
                View::Session => vec![
                    "source",
                    "sessionId",
                    "date",
                    "createdAt",
                    "title",
                    "project",
                    "device",
                    "durationMs",
                ],
                View::Device => vec!["device", "deviceId"],
                View::Weekly => vec!["week"],
                View::Monthly => vec!["month"],
                View::Project => vec!["project"],
                _ => vec!["date"],
            };
            let mut header: Vec<String> = key_names.iter().map(|s| s.to_string()).collect();
            header.extend(
                [
                    "sessions",
                    "subagents",
                    "messages",
                    "cost",
                    "input",
                    "output",
                    "reasoning",
                    "cacheRead",
                    "cacheWrite",
                    "totalTokens",
                    "errors",
                    "todosTotal",
                    "todosCompleted",
                    "additions",
                    "deletions",
                ]
                .map(String::from),
            );
            csv_line(&mut out, &header);
            for (k, t) in rows {
                let mut cells: Vec<String> = key_of(view, tz, k, infos.get(k))
                    .0
                    .into_iter()
                    .map(|(_, v)| match v {
                        Value::String(s) => s,
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .collect();
                let tk = &t.figures.tokens;
                cells.extend([
                    t.sessions.to_string(),
                    t.subagents.to_string(),
                    t.figures.messages.to_string(),
                    t.figures.cost.to_string(),
                    tk.input.to_string(),
                    tk.output.to_string(),
                    tk.reasoning.to_string(),
                    tk.cache_read.to_string(),
                    tk.cache_write.to_string(),
                    total_tokens(tk).to_string(),
                    t.errors.to_string(),
                    t.todos_total.to_string(),
                    t.todos_completed.to_string(),
                    t.additions.to_string(),
                    t.deletions.to_string(),
                ]);
                csv_line(&mut out, &cells);
            }
            csv_text(out)
        }
        Format::Table => {
            let mut header: Vec<&str> = match view {
                View::Session => vec!["Created", "Session", "Title"],
                View::Daily => vec!["Date"],
                View::Weekly => vec!["Week of"],
                View::Monthly => vec!["Month"],
                View::Project => vec!["Project"],
                _ => vec!["Device"],
            };
            let keys = header.len();
            header.extend([
                "Sessions",
                "Input",
                "Output",
                "Reasoning",
                "Cache read",
                "Cache write",
                "Total tokens",
                "Cost",
                "Errors",
                "Todos",
                "Lines +/-",
            ]);
            let mut table = new_table(styled, &header, keys);
            let mut sum = Totals::default();
            for (k, t) in rows {
                let mut cells = key_of(view, tz, k, infos.get(k)).1;
                let sessions = if t.subagents > 0 {
                    format!("{} (+{} sub)", t.sessions, t.subagents)
                } else {
                    t.sessions.to_string()
                };
                cells.push(sessions);
                cells.extend(token_cells(&t.figures.tokens));
                cells.push(dollars(t.figures.cost));
                cells.push(t.errors.to_string());
                cells.push(format!("{}/{}", t.todos_completed, t.todos_total));
                cells.push(format!("+{} -{}", t.additions, t.deletions));
                table.add_row(cells);
                if breakdown {
                    for (m, f) in sorted_models(&t.models) {
                        let mut cells = vec![String::new(); keys];
                        cells[keys - 1] = format!("  └ {m}");
                        cells.push(String::new());
                        cells.extend(token_cells(&f.tokens));
                        cells.push(dollars(f.cost));
                        table.add_row(cells);
                    }
                }
                sum.sessions += t.sessions;
                sum.subagents += t.subagents;
                add_figures(&mut sum.figures, &t.figures);
                sum.errors += t.errors;
                sum.todos_total += t.todos_total;
                sum.todos_completed += t.todos_completed;
                sum.additions += t.additions;
                sum.deletions += t.deletions;
            }
            let mut cells = vec![String::new(); keys];
            cells[0] = "Total".into();
            cells.push(if sum.subagents > 0 {
                format!("{} (+{} sub)", sum.sessions, sum.subagents)
            } else {
                sum.sessions.to_string()
            });
            cells.extend(token_cells(&sum.figures.tokens));
            cells.push(dollars(sum.figures.cost));
            cells.push(sum.errors.to_string());
            cells.push(format!("{}/{}", sum.todos_completed, sum.todos_total));
            cells.push(format!("+{} -{}", sum.additions, sum.deletions));
            add_total_row(&mut table, cells, styled);
            format!("{table}\n")
        }
    }
}

fn add_total_row(table: &mut Table, cells: Vec<String>, styled: bool) {
    table.add_row(cells.into_iter().map(|c| {
        let cell = Cell::new(c);
        if styled {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }));
}

fn render_dimension(
    view: View,
    rows: &[(String, i64, Figures)],
    total_sessions: i64,
    format: Format,
    styled: bool,
) -> String {
    let key_members = |k: &str| -> Vec<(&'static str, String)> {
        if view == View::Model {
            let (p, m) = k.split_once('/').unwrap_or(("", k));
            vec![("provider", p.to_string()), ("model", m.to_string())]
        } else {
            vec![("agent", k.to_string())]
        }
    };
    match format {
        Format::Json => {
            let arr: Vec<Value> = rows
                .iter()
                .map(|(k, sessions, f)| {
                    let mut m = Map::new();
                    for (name, v) in key_members(k) {
                        m.insert(name.into(), json!(v));
                    }
                    m.insert("sessions".into(), json!(sessions));
                    m.insert("messages".into(), json!(f.messages));
                    m.insert("cost".into(), cost_json(f.cost));
                    m.insert("tokens".into(), tokens_json(&f.tokens));
                    Value::Object(m)
                })
                .collect();
            format!("{}\n", Value::Array(arr))
        }
        Format::Csv => {
            let mut out = csv::Writer::from_writer(Vec::new());
            let mut header: Vec<String> = key_members("")
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect();
            header.extend(
                [
                    "sessions",
                    "messages",
                    "cost",
                    "input",
                    "output",
                    "reasoning",
                    "cacheRead",
                    "cacheWrite",
                    "totalTokens",
                ]
                .map(String::from),
            );
            csv_line(&mut out, &header);
            for (k, sessions, f) in rows {
                let mut cells: Vec<String> = key_members(k).into_iter().map(|(_, v)| v).collect();
                let t = &f.tokens;
                cells.extend([
                    sessions.to_string(),
                    f.messages.to_string(),
                    f.cost.to_string(),
                    t.input.to_string(),
                    t.output.to_string(),
                    t.reasoning.to_string(),
                    t.cache_read.to_string(),
                    t.cache_write.to_string(),
                    total_tokens(t).to_string(),
                ]);
                csv_line(&mut out, &cells);
            }
            csv_text(out)
        }
        Format::Table => {
            let first = if view == View::Model {
                "Model"
            } else {
                "Agent"
            };
            let header = [
                first,
                "Sessions",
                "Messages",
                "Input",
                "Output",
                "Reasoning",
                "Cache read",
                "Cache write",
                "Total tokens",
                "Cost",
            ];
            let mut table = new_table(styled, &header, 1);
            let mut sum = Figures::default();
            for (k, sessions, f) in rows {
                let mut cells = vec![k.clone(), sessions.to_string(), thousands(f.messages)];
                cells.extend(token_cells(&f.tokens));
                cells.push(dollars(f.cost));
                table.add_row(cells);
                add_figures(&mut sum, f);
            }
            let mut cells = vec![
                "Total".to_string(),
                total_sessions.to_string(),
                thousands(sum.messages),
            ];
            cells.extend(token_cells(&sum.tokens));
            cells.push(dollars(sum.cost));
            add_total_row(&mut table, cells, styled);
            format!("{table}\n")
        }
    }
}

fn render_tools(view: View, rows: &[(String, ToolTotals)], format: Format, styled: bool) -> String {
    // Keyed by the view's own name (`tool`, `skill`).
    let name = clap::ValueEnum::to_possible_value(&view);
    let key = name.as_ref().map_or("name", |v| v.get_name());
    match format {
        Format::Json => {
            let arr: Vec<Value> = rows
                .iter()
                .map(|(k, t)| {
                    json!({
                        key: k,
                        "sessions": t.sessions,
                        "calls": t.calls,
                        "errors": t.errors,
                        "durationMs": t.duration_ms,
                    })
                })
                .collect();
            format!("{}\n", Value::Array(arr))
        }
        Format::Csv => {
            let mut out = csv::Writer::from_writer(Vec::new());
            csv_line(
                &mut out,
                &[key, "sessions", "calls", "errors", "durationMs"].map(String::from),
            );
            for (k, t) in rows {
                csv_line(
                    &mut out,
                    &[
                        k.clone(),
                        t.sessions.to_string(),
                        t.calls.to_string(),
                        t.errors.to_string(),
                        t.duration_ms.to_string(),
                    ],
                );
            }
            csv_text(out)
        }
        Format::Table => {
            let first = if view == View::Tool { "Tool" } else { "Skill" };
            let header = [
                first,
                "Sessions",
                "Calls",
                "Errors",
                "Error rate",
                "Time",
                "Avg time",
            ];
            let mut table = new_table(styled, &header, 1);
            let mut sum = ToolTotals::default();
            let rate = |e: i64, c: i64| {
                if c == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}%", 100.0 * e as f64 / c as f64)
                }
            };
            let avg = |d: i64, c: i64| {
                if c == 0 {
                    "-".to_string()
                } else {
                    duration(d / c)
                }
            };
            for (k, t) in rows {
                table.add_row(vec![
                    k.clone(),
                    t.sessions.to_string(),
                    thousands(t.calls),
                    thousands(t.errors),
                    rate(t.errors, t.calls),
                    duration(t.duration_ms),
                    avg(t.duration_ms, t.calls),
                ]);
                sum.calls += t.calls;
                sum.errors += t.errors;
                sum.duration_ms += t.duration_ms;
            }
            add_total_row(
                &mut table,
                vec![
                    "Total".into(),
                    String::new(),
                    thousands(sum.calls),
                    thousands(sum.errors),
                    rate(sum.errors, sum.calls),
                    duration(sum.duration_ms),
                    avg(sum.duration_ms, sum.calls),
                ],
                styled,
            );
            format!("{table}\n")
        }
    }
}

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One stored record per line, as delivered (subagent rows included).
    Ndjson,
    /// A JSON array of the stored records.
    Json,
    /// One line per top-level session with its counted figures (the `report session --csv`
    /// columns).
    Csv,
}

/// `export`: the stored records (or the per-session figures) on stdout.
///
/// # Errors
/// As [`report`].
pub fn export(config: &Config, format: ExportFormat, scope: &Scope) -> anyhow::Result<ExitCode> {
    let (tz, filter) = scope.resolve()?;
    let reader = crate::sink::store::open_read(&config.data_dir)?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        ExportFormat::Ndjson | ExportFormat::Json => {
            let json = format == ExportFormat::Json;
            let mut first = true;
            let mut failed: Option<std::io::Error> = None;
            if json {
                stdout.write_all(b"[")?;
            }
            reader.records(&filter, |record| {
                if failed.is_some() {
                    return;
                }
                let sep: &[u8] = match (json, first) {
                    (true, true) => b"",
                    (true, false) => b",\n",
                    (false, _) => b"",
                };
                first = false;
                // Valid JSON has line breaks only as whitespace: one record, one line.
                let line = record.replace(['\n', '\r'], " ");
                let r = stdout
                    .write_all(sep)
                    .and_then(|()| stdout.write_all(line.as_bytes()))
                    .and_then(|()| {
                        if json {
                            Ok(())
                        } else {
                            stdout.write_all(b"\n")
                        }
                    });
                if let Err(e) = r {
                    failed = Some(e);
                }
            })?;
            if let Some(e) = failed {
                bail!("writing the export: {e}");
            }
            if json {
                stdout.write_all(b"]\n")?;
            }
        }
        ExportFormat::Csv => {
            let out = render(
                &reader,
                View::Session,
                &tz,
                &filter,
                false,
                Format::Csv,
                false,
            )?;
            stdout.write_all(out.as_bytes())?;
        }
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        let table: [(i64, &str); 6] = [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
            (-12_345, "-12,345"),
            (100_000, "100,000"),
        ];
        for (n, s) in table {
            assert_eq!(thousands(n), s, "{n}");
        }
        let table: [(i64, &str); 6] = [
            (0, "0ms"),
            (850, "850ms"),
            (12_340, "12.3s"),
            (245_000, "4m 05s"),
            (7_380_000, "2h 03m"),
            (-5, "0ms"),
        ];
        for (ms, s) in table {
            assert_eq!(duration(ms), s, "{ms}");
        }
        assert_eq!(dollars(0.09472), "$0.0947");
    }

    #[test]
    fn buckets_follow_the_time_zone_and_weeks_start_on_monday() {
        let utc = TimeZone::UTC;
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        // 2026-11-22T20:00:00Z is a Sunday in UTC and Monday 05:00 in Tokyo.
        let ms = 1_795_377_600_000;
        assert_eq!(bucket(View::Daily, &utc, ms), "2026-11-22");
        assert_eq!(bucket(View::Daily, &tokyo, ms), "2026-11-23");
        assert_eq!(bucket(View::Weekly, &utc, ms), "2026-11-16");
        assert_eq!(bucket(View::Weekly, &tokyo, ms), "2026-11-23");
        assert_eq!(bucket(View::Monthly, &utc, ms), "2026-11");
    }

    #[test]
    fn since_and_until_are_whole_days_in_the_time_zone() {
        let scope = Scope {
            since: Some("2026-11-22".into()),
            until: Some("2026-11-22".into()),
            timezone: Some("Asia/Tokyo".into()),
            ..Scope::default()
        };
        let (_, f) = scope.resolve().unwrap();
        // 2026-11-22T00:00+09:00 .. 2026-11-23T00:00+09:00
        assert_eq!(f.since_ms, Some(1_795_273_200_000));
        assert_eq!(f.until_ms, Some(1_795_273_200_000 + 86_400_000));
        let bad = Scope {
            since: Some("22/11/2026".into()),
            ..Scope::default()
        };
        assert!(bad.resolve().unwrap_err().to_string().contains("--since"));
        let bad = Scope {
            timezone: Some("Mars/Olympus".into()),
            ..Scope::default()
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("not a known time zone"));
    }
}
