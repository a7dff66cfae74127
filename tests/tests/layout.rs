//! The workspace's shape holds: no circle between modules in any crate,
//! and every relative link in the documents resolves (the file, and the
//! heading an `#anchor` names). Reads the source and the Markdown as text;
//! builds nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | "corpus" | "artifacts" | ".git") {
                files(&p, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

/// The module path of a source file under `src`: `ingest/writer.rs` ->
/// `["ingest", "writer"]`, `ingest/mod.rs` -> `["ingest"]`, the crate root -> `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") || !parts.is_empty() && stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// Paths named after `crate::` and `super::` in one file's code (comments
/// left out), as module paths from the crate root. `crate::{a, b::c}`
/// names `a` and `b::c`.
fn references(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find(['c', 's']) {
            let tail = &rest[i..];
            let word_start =
                i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            let (base, after) = if word_start && tail.starts_with("crate::") {
                (Vec::new(), &tail["crate::".len()..])
            } else if word_start && tail.starts_with("super::") {
                // `super` is the parent module, from `x.rs` or `x/mod.rs` alike.
                let mut base = here.to_vec();
                let mut after = tail;
                while let Some(a) = after.strip_prefix("super::") {
                    base.pop();
                    after = a;
                }
                (base, after)
            } else {
                rest = &rest[i + 1..];
                continue;
            };
            for p in paths(after) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
            rest = &after[after.len().min(1)..];
        }
    }
    out
}

/// `a::b::C`, or `{a, b::c}` -> the identifier paths.
fn paths(s: &str) -> Vec<Vec<String>> {
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        return inner[..end]
            .split(',')
            .flat_map(|part| paths(part.trim()))
            .collect();
    }
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        let id: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if id.is_empty() || id == "self" {
            break;
        }
        rest = &rest[id.len()..];
        path.push(id);
        match rest.strip_prefix("::") {
            Some(r) if !r.starts_with('{') => rest = r,
            Some(r) => {
                let prefix = path.clone();
                return paths(r)
                    .into_iter()
                    .map(|p| prefix.iter().cloned().chain(p).collect())
                    .collect();
            }
            None => break,
        }
    }
    vec![path]
}

/// The circles among the children of each module, as the dependency
/// between two modules is seen from their closest common parent: `a::x`
/// using `b::y` makes `a` depend on `b`. A module using its own parent or
/// child is containment, not a circle.
fn circles(src: &Path) -> Vec<String> {
    let mut sources = Vec::new();
    files(src, ".rs", &mut sources);
    let modules: BTreeMap<Vec<String>, PathBuf> = sources
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    // Edges grouped by the common parent: parent -> child -> children it uses.
    let mut levels: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (m, f) in &modules {
        let code = std::fs::read_to_string(f).unwrap();
        for r in references(&code, m) {
            // The longest prefix of the path that is a module.
            let target = (0..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .unwrap_or_default();
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == target.len() {
                continue; // an ancestor or a descendant
            }
            levels
                .entry(m[..common].to_vec())
                .or_default()
                .entry(m[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    let mut found = Vec::new();
    for (parent, graph) in &levels {
        // Depth-first search for a back edge.
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            state: &mut BTreeMap<String, u8>,
            stack: &mut Vec<String>,
            found: &mut Vec<Vec<String>>,
        ) {
            state.insert(n.to_string(), 1);
            stack.push(n.to_string());
            for next in g.get(n).into_iter().flatten() {
                match state.get(next.as_str()) {
                    Some(1) => {
                        let from = stack.iter().position(|s| s == next).unwrap_or(0);
                        let mut c = stack[from..].to_vec();
                        c.push(next.clone());
                        found.push(c);
                    }
                    Some(_) => {}
                    None => visit(next, g, state, stack, found),
                }
            }
            stack.pop();
            state.insert(n.to_string(), 2);
        }
        let mut state = BTreeMap::new();
        let mut cycles = Vec::new();
        for n in graph.keys() {
            if !state.contains_key(n.as_str()) {
                visit(n, graph, &mut state, &mut Vec::new(), &mut cycles);
            }
        }
        let at = if parent.is_empty() {
            "crate".to_string()
        } else {
            parent.join("::")
        };
        for c in cycles {
            found.push(format!("{}: in {at}: {}", src.display(), c.join(" -> ")));
        }
    }
    found
}

#[test]
fn no_crate_has_a_circle_between_its_modules() {
    let mut all = Vec::new();
    for krate in ["protocol", "agent", "collector", "cross", "tests"] {
        all.extend(circles(&root().join(krate).join("src")));
    }
    assert!(all.is_empty(), "circles:\n{}", all.join("\n"));
}

#[test]
fn the_circle_check_sees_a_circle() {
    // A positive control on a made-up crate: a <-> b through `crate::`,
    // grouped imports and `super::`, and containment that is not a circle.
    let dir = std::env::temp_dir().join(format!("vigil-layout-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nuse crate::a::X;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{b::inner::Y, c};\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod inner;\nuse inner::Y;\n").unwrap();
    std::fs::write(
        src.join("b/inner.rs"),
        "use super::super::a::X; // comment crate::nothing\nuse super::Z;\n",
    )
    .unwrap();
    let found = circles(&src);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("in crate: a -> b -> a"), "{found:?}");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(md: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in md.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Relative link targets in a Markdown text (outside code).
fn links(md: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in md.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push(target.to_string());
            }
            rest = &after[end..];
        }
    }
    out
}

fn broken_links(root: &Path) -> (usize, Vec<String>) {
    let mut docs = Vec::new();
    files(root, ".md", &mut docs);
    let mut checked = 0;
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for link in links(&text) {
            checked += 1;
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            let name = doc.strip_prefix(root).unwrap_or(doc).display().to_string();
            if !target.exists() {
                broken.push(format!("{name}: {link}: no such file"));
            } else if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let there = std::fs::read_to_string(&target).unwrap();
                if !anchors(&there).contains(anchor) {
                    broken.push(format!("{name}: {link}: no such heading"));
                }
            }
        }
    }
    (checked, broken)
}

#[test]
fn every_relative_link_in_the_documents_resolves() {
    let (checked, broken) = broken_links(&root());
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // The root README links every guide; a scan that found none is broken.
    assert!(checked >= 5, "only {checked} links found");
}

#[test]
fn the_link_check_sees_a_broken_link() {
    let dir = std::env::temp_dir().join(format!("vigil-links-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("a.md"),
        "# Top\n[ok](sub/b.md#the-part) [gone](sub/c.md) [bad](sub/b.md#nowhere)\n```\n[code](x.md)\n```\n",
    )
    .unwrap();
    std::fs::write(dir.join("sub/b.md"), "## The part\n[up](../a.md#top)\n").unwrap();
    let (checked, broken) = broken_links(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(checked, 4);
    assert_eq!(broken.len(), 2, "{broken:?}");
}

#[test]
fn every_alert_rule_says_what_to_do() {
    // The rule catalogue (`NAME = "id", Severity, ...` in alert.rs) against
    // the operator's guide's "What to do about each alert" table.
    let catalogue = std::fs::read_to_string(root().join("collector/src/alert.rs")).unwrap();
    let rules: Vec<&str> = catalogue
        .lines()
        .filter_map(|l| l.trim().split_once(" = \"")?.1.split_once('"'))
        .map(|(id, _)| id)
        .filter(|id| id.contains('.'))
        .collect();
    assert!(
        rules.len() >= 25,
        "only {} rules found: {rules:?}",
        rules.len()
    );
    let guide = std::fs::read_to_string(root().join("collector/README.md")).unwrap();
    let table = guide
        .split_once("## What to do about each alert")
        .map(|(_, t)| t.split("\n## ").next().unwrap_or(""))
        .unwrap_or("");
    let missing: Vec<&&str> = rules
        .iter()
        .filter(|r| {
            !table
                .lines()
                .any(|l| l.starts_with('|') && l.contains(&format!("`{r}`")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "no row in collector/README.md for {missing:?}"
    );
}
