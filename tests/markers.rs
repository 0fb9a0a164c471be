//! The lessons' markers agree with `make diff`: every code line that `make diff A=base
//! B=N` shows as new or changed ends in `// New in part N`, and no other line does.
//!
//! The rule, as README "The lessons" states it, for lesson N and its base (part N-1; part
//! 7's base is part 5):
//! - both files are compared with their markers stripped, by `diff`, exactly as `make diff`
//!   does; a line `diff` shows as added to lesson N is "new";
//! - a new code line carries `// New in part N`;
//! - no unchanged line carries a marker, and no line carries another part's;
//! - comments and blank lines carry none;
//! - the rustfmt exception: a new line needs no marker if its code ends in an opening
//!   bracket (`{`, `(` or `[`), or if the next line starts with `.` (it starts a method
//!   chain). rustfmt moves a comment after an opening bracket onto a line of its own
//!   inside, and may re-break a chain around a comment on its first line. The lines
//!   inside, and the chain's later lines, carry theirs;
//! - a marker alone on a line is what rustfmt leaves after moving one: it is refused.
//!
//! After a merge, `RSP_FIX_MARKERS=1 cargo test --test markers` then `cargo fmt` moves the
//! markers where the rule wants them (see `FIX_VAR`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const MARKER: &str = "// New in part ";

/// The lessons: `(N, path)` for each `lessons/partN_*.rs`, in order of N.
fn lessons() -> Vec<(u8, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lessons");
    let mut found: Vec<(u8, PathBuf)> = std::fs::read_dir(&dir)
        .expect("read lessons/")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let (n, _) = name.strip_prefix("part")?.split_once('_')?;
            name.ends_with(".rs")
                .then_some((n.parse().ok()?, path.clone()))
        })
        .collect();
    found.sort();
    found
}

/// The lesson a part grows from: the one before, except part 7 (mio), which grows from
/// part 5.
fn base_of(n: u8) -> Option<u8> {
    match n {
        0 | 1 => None,
        7 => Some(5),
        n => Some(n - 1),
    }
}

/// A line split into its code and the part its marker names, if it ends in one.
fn split_marker(line: &str) -> (&str, Option<&str>) {
    match line.rfind(MARKER) {
        Some(at)
            if line[at + MARKER.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit()) =>
        {
            (line[..at].trim_end(), Some(&line[at + MARKER.len()..]))
        }
        _ => (line, None),
    }
}

/// For each line of `new`, whether `diff` shows it as added relative to `old`.
fn added_lines(old: &[&str], new: &[&str]) -> Vec<bool> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let id = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let (a, b) = (
        dir.join(format!("{id}-a.rs")),
        dir.join(format!("{id}-b.rs")),
    );
    let text = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(&a, text(old)).unwrap();
    std::fs::write(&b, text(new)).unwrap();
    // One output line per line of `new`: `+` if added, `=` if unchanged.
    let output = Command::new("diff")
        .args(["--old-line-format=", "--new-line-format=+\n"])
        .args(["--unchanged-line-format==\n"])
        .args([&a, &b])
        .output()
        .expect("run diff (GNU diffutils)");
    let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "diff failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let added: Vec<bool> = output.stdout.lines().map(|l| l.unwrap() == "+").collect();
    assert_eq!(added.len(), new.len(), "diff's lines");
    added
}

/// A line of a lesson as `make diff` sees it: its number, its code (marker stripped),
/// the part its marker names, and whether it is new.
struct Line<'a> {
    number: usize,
    code: &'a str,
    marker: Option<&'a str>,
    added: bool,
}

/// Whether `line` is a marker and nothing else (`make diff` drops those lines).
fn lone_marker(line: &str) -> bool {
    line.trim_start().starts_with(MARKER) && split_marker(line).0.trim().is_empty()
}

/// The lines of `lesson` that `make diff` keeps (lone markers dropped), each with whether
/// it is new relative to `base`.
fn classify<'a>(base: &str, lesson: &'a str) -> Vec<Line<'a>> {
    let old: Vec<&str> = base
        .lines()
        .filter(|l| !lone_marker(l))
        .map(|l| split_marker(l).0)
        .collect();
    let mut lines: Vec<Line> = lesson
        .lines()
        .enumerate()
        .filter(|(_, l)| !lone_marker(l))
        .map(|(i, l)| {
            let (code, marker) = split_marker(l);
            let added = false;
            Line {
                number: i + 1,
                code,
                marker,
                added,
            }
        })
        .collect();
    let new: Vec<&str> = lines.iter().map(|l| l.code).collect();
    for (line, added) in lines.iter_mut().zip(added_lines(&old, &new)) {
        line.added = added;
    }
    lines
}

/// Comments and blank lines never carry a marker.
fn is_comment(code: &str) -> bool {
    let text = code.trim();
    text.is_empty() || text.starts_with("//")
}

/// The rustfmt exception: a line whose code ends in an opening bracket, or that is
/// followed by a line starting with `.` (it starts a method chain).
fn rustfmt_exception(code: &str, next: Option<&str>) -> bool {
    code.trim_end().ends_with(['{', '(', '['])
        || next.is_some_and(|next| next.trim_start().starts_with('.'))
}

/// Every disagreement between `lesson`'s markers (it is part `n`) and the diff from
/// `base`, one line each, named `name:LINE`.
fn mismatches(name: &str, n: u8, base: &str, lesson: &str) -> Vec<String> {
    let mut problems: Vec<String> = lesson
        .lines()
        .enumerate()
        .filter(|(_, l)| lone_marker(l))
        .map(|(i, _)| format!("{name}:{}: a marker alone on its line (delete it)", i + 1))
        .collect();
    let lines = classify(base, lesson);
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.code);
        let at = format!("{name}:{}: `{}`", line.number, line.code.trim());
        let problem = match line.marker {
            Some(part) if part != n.to_string() => format!("marked as part {part}'s"),
            Some(_) if !line.added => "marked, but unchanged".to_string(),
            Some(_) if is_comment(line.code) => "a comment or blank line, marked".to_string(),
            None if line.added && !is_comment(line.code) && !rustfmt_exception(line.code, next) => {
                "new or changed, not marked".to_string()
            }
            _ => continue,
        };
        problems.push(format!("{at}: {problem}"));
    }
    problems
}

#[test]
fn markers_are_exactly_on_the_lines_make_diff_shows_as_new() {
    let lessons = lessons();
    assert!(lessons.len() >= 5, "found only {lessons:?}");
    let mut problems = Vec::new();
    for (n, path) in &lessons {
        let name = format!("lessons/{}", path.file_name().unwrap().to_str().unwrap());
        let text = std::fs::read_to_string(path).unwrap();
        let Some(base) = base_of(*n).and_then(|b| lessons.iter().find(|(m, _)| *m == b)) else {
            // The first lesson: everything is new, and nothing is marked.
            let marked = text.lines().position(|l| l.contains(MARKER));
            if let Some(i) = marked {
                problems.push(format!("{name}:{}: a marker in the first lesson", i + 1));
            }
            continue;
        };
        let base_text = std::fs::read_to_string(&base.1).unwrap();
        let mut text = text;
        if std::env::var_os(FIX_VAR).is_some() {
            text = fixed(*n, &base_text, &text);
            std::fs::write(path, &text).unwrap();
        }
        let see = format!("(`make diff A={} B={n}` shows the diff)", base.0);
        let found = mismatches(&name, *n, &base_text, &text);
        problems.extend(found.into_iter().map(|p| format!("{p} {see}")));
    }
    assert!(
        problems.is_empty(),
        "{} marker problems (README \"The lessons\" gives the rule; `{FIX_VAR}=1 cargo test \
         --test markers`, then `cargo fmt`, moves the markers where `diff` wants them):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Set, this variable makes the test move the markers where the rule wants them before it
/// checks: for a merge, where another branch's edit changed how `diff` pairs up lines
/// such as `}`. Run `cargo fmt` after it, and read what changed.
const FIX_VAR: &str = "RSP_FIX_MARKERS";

/// `lesson` (part `n`) with a marker added to every new line that needs one, removed from
/// every unchanged line, and lone markers deleted.
fn fixed(n: u8, base: &str, lesson: &str) -> String {
    let lines = classify(base, lesson);
    let mut out: Vec<String> = lesson.lines().map(String::from).collect();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.code);
        let needed = !is_comment(line.code) && !rustfmt_exception(line.code, next);
        match line.marker {
            Some(_) if !line.added => out[line.number - 1] = line.code.to_string(),
            None if line.added && needed => {
                out[line.number - 1] = format!("{} {MARKER}{n}", line.code)
            }
            _ => {}
        }
    }
    out.retain(|l| !lone_marker(l));
    out.join("\n") + "\n"
}

/// The check itself: in every lesson, removing the marker of one new line, or marking
/// one unchanged line, is caught and named.
#[test]
fn one_marker_removed_or_added_is_caught() {
    let lessons = lessons();
    for (n, path) in &lessons {
        let Some(base) = base_of(*n).and_then(|b| lessons.iter().find(|(m, _)| *m == b)) else {
            continue;
        };
        let base = std::fs::read_to_string(&base.1).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let lines = classify(&base, &text);
        // The problems the edit adds to those the lesson has now (none, once it is right).
        let before = mismatches("x", *n, &base, &text);
        let edit = |number: usize, new_line: String| -> Vec<String> {
            let mut edited: Vec<&str> = text.lines().collect();
            edited[number - 1] = &new_line;
            let mut found = mismatches("x", *n, &base, &edited.join("\n"));
            found.retain(|p| !before.contains(p));
            found
        };

        let marked = lines.iter().find(|l| l.marker.is_some());
        let marked = marked.unwrap_or_else(|| panic!("part {n}: no marked line"));
        let found = edit(marked.number, marked.code.to_string());
        let want = format!(
            "x:{}: `{}`: new or changed, not marked",
            marked.number,
            marked.code.trim()
        );
        assert_eq!(
            found,
            [want],
            "part {n}: the marker of line {} removed",
            marked.number
        );

        let unchanged = lines.iter().find(|l| !l.added && !is_comment(l.code));
        let unchanged = unchanged.unwrap_or_else(|| panic!("part {n}: no unchanged code line"));
        let found = edit(unchanged.number, format!("{} {MARKER}{n}", unchanged.code));
        let want = format!(
            "x:{}: `{}`: marked, but unchanged",
            unchanged.number,
            unchanged.code.trim()
        );
        assert_eq!(
            found,
            [want],
            "part {n}: a marker added to line {}",
            unchanged.number
        );
    }
}
