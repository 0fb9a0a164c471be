//! `GET /`: one self-contained HTML page (no external assets) that fetches
//! `/stats.json` once a second and redraws its tables; and that JSON, written by hand
//! (a few numbers and names need no serde).

use std::fmt::Write;

use super::snapshot::Snapshot;
use super::{ModeFigures, outcomes};

/// The page. Its script only reads `/stats.json`; it works from `file://` too if the
/// address is edited, and needs nothing from the internet.
pub const HTML: &str = include_str!("page.html");

/// A JSON string literal for `text` (quotes, backslashes and control characters escaped).
fn string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JSON the page draws.
pub fn json(s: &Snapshot) -> String {
    let mut out = String::new();
    let live = s.live.as_ref();
    let _ = write!(
        out,
        "{{\"uptime\":{:.1},\"mode\":{},\"open\":{},\"limit\":{},\"draining\":{},\"reloads\":[{},{}]",
        s.uptime,
        string(s.mode),
        live.map_or(0, |l| l.open),
        s.limit.map_or("null".into(), |l| l.to_string()),
        live.is_some_and(|l| l.draining),
        s.reloads[0],
        s.reloads[1],
    );
    let totals: Vec<String> = s
        .outcome_totals()
        .iter()
        .map(|(name, n)| format!("{}:{n}", string(name)))
        .collect();
    let _ = write!(out, ",\"outcomes\":{{{}}}", totals.join(","));
    let names: Vec<String> = outcomes().map(|o| string(o.as_str())).collect();
    let backends: Vec<String> = s
        .backends
        .iter()
        .map(|b| {
            let ended: Vec<String> = b.outcomes.iter().map(u64::to_string).collect();
            format!(
                "{{\"name\":{},\"state\":{},\"weight\":{},\"open\":{},\"total\":{},\"failures\":{},\
                 \"bytes_up\":{},\"bytes_down\":{},\"ended\":[{}]}}",
                string(&b.name),
                string(b.state),
                b.weight,
                b.open,
                b.total,
                b.connect_failures,
                b.bytes_up,
                b.bytes_down,
                ended.join(",")
            )
        })
        .collect();
    let _ = write!(
        out,
        ",\"outcome_names\":[{}],\"backends\":[{}]",
        names.join(","),
        backends.join(",")
    );
    match s.mode_figures() {
        Some(ModeFigures::Threads {
            workers,
            copiers,
            queued,
            handoff_full,
        }) => {
            let pool = |p: &super::PoolFigures| {
                format!(
                    "{{\"threads\":{},\"busy\":{},\"peak\":{},\"max\":{}}}",
                    p.threads, p.busy, p.peak, p.max
                )
            };
            let _ = write!(
                out,
                ",\"threads\":{{\"workers\":{},\"copiers\":{},\"queued\":{queued},\"handoff_full\":{handoff_full}}}",
                pool(workers),
                pool(copiers)
            );
        }
        Some(ModeFigures::Mio {
            loops,
            max_buffered,
        }) => {
            let loops: Vec<String> = loops
                .iter()
                .map(|l| {
                    format!(
                        "{{\"conns\":{},\"queued\":{},\"paused\":{}}}",
                        l[0], l[1], l[2]
                    )
                })
                .collect();
            let _ = write!(
                out,
                ",\"mio\":{{\"max_buffered\":{max_buffered},\"loops\":[{}]}}",
                loops.join(",")
            );
        }
        None => {}
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
