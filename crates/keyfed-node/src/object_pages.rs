//! Admin.ListObjects a page at a time (issue 12): objects by name, with a
//! name prefix and a key filter. `page_size` 0 keeps the old answer, every
//! object. The objects are gathered from the grants and waiting records
//! as `Status` counts them (a scan; objects have no index of their own yet).
use keyfed_proto::v1 as pb;
use std::collections::BTreeMap;

/// Most objects one page holds.
pub const MAX_PAGE_SIZE: usize = 1000;

/// One page of `objects` (by name) for `r`, or why the request is wrong.
pub fn page(
    objects: BTreeMap<String, pb::ObjectInfo>,
    r: &pb::ListObjectsRequest,
) -> Result<pb::ObjectList, String> {
    let matches = |o: &pb::ObjectInfo| {
        o.name.starts_with(&r.search)
            && (r.key_id.is_empty()
                || o.grants.iter().any(|g| g.key_id == r.key_id)
                || o.state.ends_with(&format!(" of {}", r.key_id)))
    };
    if r.page_size == 0 {
        if !r.page_token.is_empty() {
            return Err("page_token needs a page_size".into());
        }
        return Ok(pb::ObjectList {
            objects: objects.into_values().filter(|o| matches(o)).collect(),
            next_page_token: String::new(),
        });
    }
    let size = usize::try_from(r.page_size).unwrap_or(usize::MAX);
    if size > MAX_PAGE_SIZE {
        return Err(format!(
            "page_size {size} is more than the {MAX_PAGE_SIZE} a page may hold"
        ));
    }
    let after = match r.page_token.as_str() {
        "" => None,
        t => Some(
            t.strip_prefix("o1.")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    format!(
                        "page_token {t:?} is not a token this node gave; start again without one"
                    )
                })?,
        ),
    };
    let mut listed: Vec<pb::ObjectInfo> = objects
        .into_values()
        .filter(|o| after.as_ref().is_none_or(|a| o.name > *a) && matches(o))
        .take(size + 1)
        .collect();
    let next_page_token = if listed.len() > size {
        listed.truncate(size);
        listed
            .last()
            .map(|o| format!("o1.{}", hex::encode(&o.name)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ObjectList {
        objects: listed,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(names: &[&str]) -> BTreeMap<String, pb::ObjectInfo> {
        names
            .iter()
            .map(|n| {
                let o = pb::ObjectInfo {
                    name: (*n).into(),
                    ..Default::default()
                };
                ((*n).to_owned(), o)
            })
            .collect()
    }

    fn req(size: u32, token: &str, search: &str) -> pb::ListObjectsRequest {
        pb::ListObjectsRequest {
            page_size: size,
            page_token: token.into(),
            search: search.into(),
            key_id: String::new(),
        }
    }

    #[test]
    fn pages_by_name_list_each_object_once() {
        let all = objects(&["a1", "a2", "b1", "a3", "a4"]);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let p = page(all.clone(), &req(2, &token, "a")).unwrap();
            seen.extend(p.objects.into_iter().map(|o| o.name));
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(seen, ["a1", "a2", "a3", "a4"]);
    }

    #[test]
    fn a_zero_page_size_answers_every_object_and_bad_tokens_are_refused() {
        let all = objects(&["a", "b"]);
        assert_eq!(page(all.clone(), &req(0, "", "")).unwrap().objects.len(), 2);
        assert!(page(all.clone(), &req(1, "nonsense", "")).is_err());
        assert!(page(all.clone(), &req(0, "o1.61", "")).is_err());
        assert!(page(all, &req(5000, "", "")).is_err());
    }
}
