//! Output: aligned tables for people, JSON for scripts.
use serde::Serialize;

/// Widest a table cell gets; longer values are cut with an ellipsis (the
/// whole value stays in `--json`). Stores written before names were limited
/// can hold names of any length.
pub const MAX_CELL_CHARS: usize = 60;

/// `cell` cut to [`MAX_CELL_CHARS`] characters, the last one an ellipsis.
fn clip(cell: &str) -> String {
    // one line per row: a newline in a stored value would break the table
    let flat: String = cell
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= MAX_CELL_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_CELL_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Prints rows under a header, each column as wide as its widest cell.
/// Pads by hand: `format!("{c:<w$}")` panics on widths above `u16::MAX`.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let clipped: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clip(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &clipped {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(c);
            out.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(c.chars().count()),
            ));
        }
        out.trim_end().to_owned()
    };
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = vec![line(&head)];
    out.extend(clipped.iter().map(|r| line(r)));
    out.join("\n") + "\n"
}

/// Prints `value` as JSON when asked, else as the table `human` makes.
pub fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("replies serialize")
        );
    } else {
        print!("{}", human(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let t = table(
            &["ID", "SEATS"],
            &[
                vec!["k-1".into(), "5".into()],
                vec!["k-longer".into(), "50".into()],
            ],
        );
        assert_eq!(t, "ID        SEATS\nk-1       5\nk-longer  50\n");
    }

    #[test]
    fn an_absurd_cell_is_cut_with_an_ellipsis_and_never_panics() {
        let huge = "x".repeat(100_000);
        let t = table(
            &["OBJECT", "KIND"],
            &[
                vec![huge.clone(), "station".into()],
                vec!["pc-1\nINJECTED".into(), "station".into()],
                vec!["ü".repeat(70), String::new()],
                vec!["short-row".into()], // fewer cells than the header
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "one line per row: {t}");
        let first = lines[1].split_whitespace().next().unwrap();
        assert_eq!(first.chars().count(), MAX_CELL_CHARS);
        assert!(first.ends_with('…'), "{first}");
        assert!(lines[1].ends_with("station"), "{}", lines[1]);
        assert!(lines[2].starts_with("pc-1 INJECTED"), "{}", lines[2]);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() <= 2 * MAX_CELL_CHARS + 2));
    }
}
