//! The shell's modules import each other in no circle: each `crate::m` path
//! in a module's source is an edge; the graph must be acyclic. (The root,
//! `lib.rs`, wires them together and is left out, as is the binary.)
use std::collections::{BTreeMap, BTreeSet};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph() -> Graph {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("src dir") {
        let path = e.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|x| x != "rs") || name == "lib" || name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let mut deps = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for part in line.split("crate::").skip(1) {
                let m: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !m.is_empty() && m != name && dir.join(format!("{m}.rs")).exists() {
                    deps.insert(m);
                }
            }
        }
        g.insert(name, deps);
    }
    g
}

fn cycle_from(
    g: &Graph,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == at) {
        let mut c = path[i..].to_vec();
        c.push(at.to_owned());
        return Some(c);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_owned());
    for d in g.get(at).into_iter().flatten() {
        if let Some(c) = cycle_from(g, d, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(at.to_owned());
    None
}

#[test]
fn the_shell_modules_import_each_other_in_no_circle() {
    let g = graph();
    assert!(g.len() > 10, "found the modules: {g:?}");
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let mut g = Graph::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    let c = cycle_from(&g, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(c, Some(vec!["a".into(), "b".into(), "a".into()]));
}
