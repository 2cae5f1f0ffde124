//! CSV of list replies (issue 12): a header row with the message's proto
//! field names, then one row per message, fields in proto order, RFC 4180
//! quoting and CRLF line ends. One writer for the API, the console and
//! keyfedctl, so the three never disagree.
use crate::v1::{Denial, UsagePoint};

/// One field: quoted when it holds a comma, a quote, CR or LF (quotes doubled).
#[must_use]
pub fn field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// The whole document: `header`, then `rows`.
#[must_use]
pub fn write<R, F>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = Vec<F>>,
    F: AsRef<str>,
{
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = std::borrow::Cow<'_, str>>| {
        let mut first = true;
        for c in cells {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&c);
        }
        out.push_str("\r\n");
    };
    line(&mut header.iter().map(|h| field(h)));
    for row in rows {
        line(&mut row.iter().map(|c| field(c.as_ref())));
    }
    out
}

/// `UsagePoint`'s fields in proto order.
pub const USAGE_POINT_HEADER: [&str; 7] = [
    "at",
    "node_id",
    "key_id",
    "held",
    "used",
    "free",
    "resolution",
];

/// `UsageHistoryReply.points` as CSV.
#[must_use]
pub fn usage_points(points: &[UsagePoint]) -> String {
    write(
        &USAGE_POINT_HEADER,
        points.iter().map(|p| {
            vec![
                p.at.clone(),
                p.node_id.clone(),
                p.key_id.clone(),
                p.held.to_string(),
                p.used.to_string(),
                p.free.to_string(),
                p.resolution.clone(),
            ]
        }),
    )
}

/// `Denial`'s fields in proto order.
pub const DENIAL_HEADER: [&str; 8] = [
    "seq", "at", "kind", "object", "key_id", "node_id", "reason", "message",
];

/// A denial's fields in proto order, as CSV and keyfedctl's table show them.
#[must_use]
pub fn denial_row(d: &Denial) -> Vec<String> {
    vec![
        d.seq.to_string(),
        d.at.clone(),
        d.kind.clone(),
        d.object.clone(),
        d.key_id.clone(),
        d.node_id.clone(),
        d.reason.clone(),
        d.message.clone(),
    ]
}

/// `DenialList.denials` as CSV.
#[must_use]
pub fn denials(denials: &[Denial]) -> String {
    write(&DENIAL_HEADER, denials.iter().map(denial_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        let doc = write(
            &["a", "b"],
            [
                vec!["plain", "with,comma"],
                vec!["say \"hi\"", "two\nlines"],
            ],
        );
        assert_eq!(
            doc,
            "a,b\r\nplain,\"with,comma\"\r\n\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
    }

    #[test]
    fn usage_points_have_the_proto_fields_in_order() {
        let p = UsagePoint {
            at: "2026-03-01T00:00:00Z".into(),
            node_id: "main".into(),
            key_id: "k-1".into(),
            held: 10,
            used: 4,
            free: 6,
            resolution: "5m".into(),
        };
        assert_eq!(
            usage_points(&[p]),
            "at,node_id,key_id,held,used,free,resolution\r\n2026-03-01T00:00:00Z,main,k-1,10,4,6,5m\r\n"
        );
    }

    #[test]
    fn denials_have_the_proto_fields_in_order() {
        let d = Denial {
            seq: 7,
            reason: "no-free-seats".into(),
            message: "no free seat for dlp,vpn".into(),
            ..Default::default()
        };
        assert_eq!(
            denials(&[d]),
            "seq,at,kind,object,key_id,node_id,reason,message\r\n7,,,,,,no-free-seats,\"no free seat for dlp,vpn\"\r\n"
        );
    }
}
