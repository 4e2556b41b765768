//! The fuzz targets' bodies: each takes raw bytes, runs Roster's own parsing
//! on them and asserts invariants (a panic is a finding). The binaries in
//! `src/bin/` hand them to AFL++, or, run outside AFL, check one input read
//! from standard input (`fuzz/run replay` does that for the corpus).

use prost::Message;
use roster::{
    credentials::{PooledCheck, parse_stored},
    domain::{Outcome, PageSize, PageToken, Password, RequestId, Score, UserCursor, UserName},
    error::Error,
    grpc::parse,
    proto::roster::v1 as pb,
};
use unicode_normalization::UnicodeNormalization;

/// Every reason `UserName::parse` may give.
const NAME_REASONS: &[&str] = &[
    "NAME_EMPTY",
    "NAME_TOO_LONG",
    "NAME_WHITESPACE",
    "NAME_CONTROL_CHARACTER",
    "NAME_BIDI_CONTROL",
    "NAME_UNASSIGNED_CHARACTER",
    "NAME_DISALLOWED_CHARACTER",
    "NAME_UNSTABLE",
    "NAME_MIXED_SCRIPT",
];

/// Runs the lazily built tables (PRECIS, the common-password set) once, so
/// that a forked fuzz process starts with them built.
pub fn warm_up() {
    let _ = UserName::parse("Zoë");
    let _ = Password::parse_new("warm up the tables".into(), None);
}

/// Protobuf strings are UTF-8: anything else never reaches the parsers.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks one name against the name invariants; returns the parsed name.
pub fn check_name(raw: &str) -> Option<UserName> {
    let result = UserName::parse(raw);
    assert_eq!(
        result
            .as_ref()
            .map(|n| (n.display().to_owned(), n.key().clone())),
        UserName::parse(raw)
            .as_ref()
            .map(|n| (n.display().to_owned(), n.key().clone())),
        "parsing is deterministic"
    );
    let name = match result {
        Err(invalid) => {
            assert!(NAME_REASONS.contains(&invalid.reason), "{}", invalid.reason);
            assert!(!invalid.description.is_empty());
            if raw.len() > UserName::MAX_BYTES {
                assert_eq!(invalid.reason, "NAME_TOO_LONG", "the byte cap comes first");
            }
            if raw.is_empty() {
                assert_eq!(invalid.reason, "NAME_EMPTY");
            }
            let ascii = raw.bytes().all(|b| (0x21..=0x7E).contains(&b));
            assert!(
                !(ascii && !raw.is_empty() && raw.len() <= UserName::MAX_CODE_POINTS),
                "printable ASCII within the limit is always a name: {raw:?}"
            );
            return None;
        }
        Ok(name) => name,
    };
    let key = name.key().as_str();
    let display = name.display();
    assert!(raw.len() <= UserName::MAX_BYTES);
    let points = key.chars().count();
    assert!(
        (1..=UserName::MAX_CODE_POINTS).contains(&points),
        "{points} code points"
    );
    for text in [key, display] {
        assert!(text.nfc().eq(text.chars()), "{text:?} is NFC");
        assert!(
            !text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || is_bidi_control(c)),
            "{text:?} holds a forbidden character"
        );
    }
    // The canonical key is a fixed point: it is a name, and its own key.
    let again = UserName::parse(key).expect("a key is a valid name");
    assert_eq!(again.key(), name.key(), "the key of a key is itself");
    assert_eq!(again.display(), key);
    // The name as registered finds the same user.
    let shown = UserName::parse(display).expect("a display name is a valid name");
    assert_eq!(shown.key(), name.key(), "the display form keeps the key");
    if raw.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        assert_eq!(key, raw.to_ascii_lowercase());
        assert_eq!(display, raw);
    }
    // A ListUsers cursor after this name round-trips.
    let token = UserCursor::after(name.key().clone()).encode();
    let cursor = UserCursor::parse(&token)
        .expect("our own cursor parses")
        .expect("a cursor");
    assert_eq!(cursor.key(), name.key());
    assert_eq!(cursor.encode(), token);
    Some(name)
}

/// Target `user_name`: the input as a name.
pub fn user_name(data: &[u8]) {
    if let Some(raw) = text(data) {
        check_name(raw);
    }
}

/// Target `password`: `name NUL password`, or a password alone.
pub fn password(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let (name, password) = match raw.split_once('\0') {
        Some((name, password)) => (UserName::parse(name).ok(), password),
        None => (None, raw),
    };
    check_password(password, name.as_ref());
}

fn reason<T>(result: &Result<T, roster::domain::Invalid>) -> Option<&'static str> {
    result.as_ref().err().map(|invalid| invalid.reason)
}

/// Checks the password rules on `raw` (for a user called `name`).
pub fn check_password(raw: &str, name: Option<&UserName>) {
    let normalized: String = raw.nfc().collect();
    let too_long = raw.len() > Password::MAX_BYTES;

    let candidate = Password::parse_candidate(raw.to_owned());
    let expected = if too_long {
        Some("PASSWORD_TOO_LONG")
    } else if normalized.is_empty() {
        Some("PASSWORD_EMPTY")
    } else {
        None
    };
    assert_eq!(reason(&candidate), expected, "parse_candidate");

    let rule = Password::parse(raw.to_owned());
    let expected = if too_long {
        Some("PASSWORD_TOO_LONG")
    } else if normalized.chars().count() < Password::MIN_CODE_POINTS {
        Some("PASSWORD_TOO_SHORT")
    } else {
        None
    };
    assert_eq!(reason(&rule), expected, "parse");
    if let Ok(password) = &rule {
        let shown = format!("{password:?}");
        assert!(
            shown == "Password(<redacted>)",
            "Debug must not show the password"
        );
    }

    let anyone = Password::parse_new(raw.to_owned(), None);
    let for_name = Password::parse_new(raw.to_owned(), name);
    match reason(&rule) {
        // The base rule is checked first, whatever the name.
        Some(base) => {
            assert_eq!(reason(&anyone), Some(base));
            assert_eq!(reason(&for_name), Some(base));
        }
        None => {
            let common = reason(&anyone) == Some("PASSWORD_TOO_COMMON");
            assert!(common || anyone.is_ok(), "{:?}", reason(&anyone));
            let folded = normalized.to_lowercase();
            let is_name = name.is_some_and(|name| {
                folded == name.key().as_str() || folded == name.display().to_lowercase()
            });
            let expected = if common {
                Some("PASSWORD_TOO_COMMON")
            } else if is_name {
                Some("PASSWORD_IS_NAME")
            } else {
                None
            };
            assert_eq!(reason(&for_name), expected, "parse_new with the name");
            // Common passwords are compared without regard to case.
            if raw.is_ascii() {
                for variant in [raw.to_ascii_uppercase(), raw.to_ascii_lowercase()] {
                    let variant = Password::parse_new(variant, None);
                    assert_eq!(
                        reason(&variant) == Some("PASSWORD_TOO_COMMON"),
                        common,
                        "case changes whether {raw:?} is common"
                    );
                }
            }
        }
    }
}

/// Target `page_token`: the input as a ListLeaderboard token (with every page
/// size) and as a ListUsers token.
pub fn page_token(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    check_board_token(raw);
    check_user_cursor(raw);
}

/// Board tokens: valid with at most the one page size they were issued for,
/// whole pages only, and a decoded token is the one Roster would issue.
pub fn check_board_token(raw: &str) {
    let mut accepted = Vec::new();
    let mut mismatches = 0;
    for requested in 0..=PageSize::BOARD_MAX as i32 + 1 {
        let size = PageSize::parse_page(requested).expect("non-negative sizes are valid");
        match PageToken::decode(raw, size) {
            Ok(offset) => {
                if raw.is_empty() {
                    assert_eq!(offset, 0);
                    continue;
                }
                assert!(
                    offset.is_multiple_of(u64::from(size.get())),
                    "whole pages only"
                );
                assert_eq!(
                    PageToken::new(size, offset).encode(),
                    raw,
                    "a decoded token re-encodes to itself"
                );
                // The next page's offset exists and fits a board's signed
                // 64-bit count (as SQL's OFFSET does).
                let next = offset.checked_add(u64::from(size.get()));
                assert!(
                    next.is_some_and(|next| i64::try_from(next).is_ok()),
                    "offset {offset} is beyond any board"
                );
                accepted.push(size.get());
            }
            Err(invalid) => match invalid.reason {
                "PAGE_TOKEN_INVALID" => assert!(!raw.is_empty()),
                "PAGE_TOKEN_PAGE_SIZE_MISMATCH" => mismatches += 1,
                other => panic!("unexpected reason {other}"),
            },
        }
    }
    accepted.sort_unstable();
    accepted.dedup();
    assert!(
        accepted.len() <= 1,
        "one token, one page size: {accepted:?}"
    );
    if accepted.is_empty() {
        assert_eq!(
            mismatches, 0,
            "a mismatch means the token is valid elsewhere"
        );
    }
    if raw.len() > 64 {
        assert!(accepted.is_empty(), "tokens are short");
    }
}

/// ListUsers tokens: a cursor at a canonical name, re-encoding to itself.
pub fn check_user_cursor(raw: &str) {
    match UserCursor::parse(raw) {
        Ok(None) => assert!(raw.is_empty()),
        Ok(Some(cursor)) => {
            assert_eq!(
                cursor.encode(),
                raw,
                "a decoded cursor re-encodes to itself"
            );
            let name = UserName::parse(cursor.key().as_str()).expect("a cursor holds a name");
            assert_eq!(name.key(), cursor.key(), "a cursor holds a canonical key");
        }
        Err(invalid) => {
            assert_eq!(invalid.reason, "PAGE_TOKEN_INVALID");
            assert!(!raw.is_empty());
        }
    }
}

/// Target `request_id`: the input as an idempotency key, and its first bytes
/// as a score and an outcome.
pub fn request_id(data: &[u8]) {
    if let Some(raw) = text(data) {
        check_request_id(raw);
    }
    let mut eight = [0u8; 8];
    let n = data.len().min(8);
    eight[..n].copy_from_slice(&data[..n]);
    let number = i64::from_le_bytes(eight);
    match Score::parse(number) {
        Ok(score) => {
            assert_eq!(score.get(), number);
            assert_eq!(number as f64 as i64, number, "exact in a double");
        }
        Err(invalid) => {
            assert_eq!(invalid.reason, "SCORE_OUT_OF_RANGE");
            assert!(!(0..=Score::MAX).contains(&number));
        }
    }
    let outcome = number as i32;
    assert_eq!(Outcome::parse(outcome).is_ok(), (1..=3).contains(&outcome));
}

/// Checks one idempotency key.
pub fn check_request_id(raw: &str) {
    match RequestId::parse(raw) {
        Ok(None) => assert!(raw.is_empty()),
        Ok(Some(id)) => {
            assert_eq!(id.as_str(), raw, "kept as sent");
            assert!(raw.len() <= RequestId::MAX_BYTES);
            assert!(!raw.chars().any(char::is_control));
            assert_eq!(RequestId::parse(id.as_str()), Ok(Some(id.clone())));
        }
        Err(invalid) => {
            assert!(!raw.is_empty());
            if raw.len() > RequestId::MAX_BYTES {
                assert_eq!(invalid.reason, "REQUEST_ID_TOO_LONG");
            } else {
                assert_eq!(invalid.reason, "REQUEST_ID_INVALID_CHARACTER");
                assert!(raw.chars().any(char::is_control));
            }
        }
    }
}

/// Target `phc`: the input as a stored password hash, parsed as
/// `PasswordHasher::verify` parses it (no hashing).
pub fn phc(data: &[u8]) {
    if let Some(raw) = text(data) {
        check_phc(raw);
    }
}

/// Checks the parse of one stored PHC string.
pub fn check_phc(raw: &str) {
    let Ok((parsed, pooled)) = parse_stored(raw) else {
        return;
    };
    // The PHC string survives a round trip through its own serializer.
    let text = parsed.to_string();
    let reparsed = argon2::PasswordHash::new(&text).expect("a serialized PHC string parses");
    assert_eq!(reparsed, parsed, "PHC round trip of {raw:?}");
    let Some(pooled) = pooled else {
        // Not argon2id v19 with salt and tag: the argon2 crate verifies it.
        let argon2id_v19 = parsed.algorithm == argon2::Algorithm::Argon2id.ident()
            && parsed.version == Some(argon2::Version::V0x13.into());
        assert!(!argon2id_v19 || parsed.salt.is_none() || parsed.hash.is_none());
        return;
    };
    check_pooled(&pooled, &parsed);
    // What we would hash with serializes back to a string that parses to it.
    let params = argon2::password_hash::ParamsString::try_from(&pooled.params)
        .expect("valid parameters serialize");
    let again = argon2::PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params,
        salt: parsed.salt,
        hash: parsed.hash,
    }
    .to_string();
    let (_, again) = parse_stored(&again).expect("re-serialized hash parses");
    assert_eq!(again.as_ref(), Some(&pooled), "the parse is idempotent");
}

fn check_pooled(pooled: &PooledCheck, parsed: &argon2::PasswordHash<'_>) {
    let params = &pooled.params;
    assert_eq!(
        params.output_len(),
        Some(pooled.expected.len()),
        "the check computes a tag as long as the stored one"
    );
    assert!(
        params.m_cost() >= 8 * params.p_cost(),
        "argon2's lower bound"
    );
    let blocks = params.block_count();
    // The memory the check takes is what the string asks for, never more.
    assert!(blocks as u64 <= u64::from(params.m_cost()));
    assert!(blocks >= 8 * params.p_cost() as usize);
    let salt = pooled.salt();
    assert!(
        (1..=64).contains(&salt.len()),
        "salt of {} bytes",
        salt.len()
    );
    let stored_salt = parsed.salt.expect("pooled hashes have a salt");
    let mut buffer = [0u8; 64];
    assert_eq!(
        stored_salt.decode_b64(&mut buffer).expect("decoded once"),
        salt
    );
    // The same numbers build the same parameters through the public constructor.
    let rebuilt = argon2::Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        params.output_len(),
    )
    .expect("the parsed parameters are within argon2's limits");
    assert_eq!(rebuilt.block_count(), blocks);
}

/// What a list of per-field results should give.
fn expected(fields: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, &'static str)> {
    fields
        .iter()
        .filter_map(|&(field, reason)| reason.map(|reason| (field, reason)))
        .collect()
}

/// Checks the gRPC status a refused request becomes.
fn check_status(error: Error, violations: &[(&'static str, &'static str)]) {
    use tonic_types::StatusExt;
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(!status.message().is_empty());
    let bad = status
        .get_details_bad_request()
        .expect("a BadRequest detail");
    let got: Vec<(String, String)> = bad
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.reason))
        .collect();
    let want: Vec<(String, String)> = violations
        .iter()
        .map(|&(f, r)| (f.to_owned(), r.to_owned()))
        .collect();
    assert_eq!(got, want, "one violation per bad field");
    let info = status
        .get_details_error_info()
        .expect("an ErrorInfo detail");
    assert_eq!(info.reason, violations[0].1);
    assert_eq!(info.domain, "roster");
    // The status survives its trip through HTTP/2 trailers.
    let mut headers = tonic::metadata::MetadataMap::new().into_headers();
    status
        .add_header(&mut headers)
        .expect("the status fits in headers");
    let back = tonic::Status::from_header_map(&headers).expect("a status in the headers");
    assert_eq!(back.code(), status.code());
    assert_eq!(back.message(), status.message());
    assert_eq!(back.details(), status.details());
}

/// Target `request`: the first byte picks a request message type, the rest is
/// that message's protobuf encoding; the message goes through the handler's
/// own parsing (`roster::grpc::parse`), checked against the domain parsers
/// field by field.
pub fn request(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => decoded::<pb::CreateUserRequest>(bytes, |m| {
            let name = UserName::parse(&m.name);
            let fields = [
                ("name", reason(&name)),
                (
                    "password",
                    reason(&Password::parse_new(m.password.clone(), name.as_ref().ok())),
                ),
                ("request_id", reason(&RequestId::parse(&m.request_id))),
            ];
            outcome(
                parse::create_user(m.clone()).map(|(n, _, id)| (n, id)),
                &fields,
                |(n, id)| {
                    assert_eq!(n.key(), name.as_ref().unwrap().key());
                    assert_eq!(id, RequestId::parse(&m.request_id).unwrap());
                },
            );
        }),
        1 => decoded::<pb::GetUserRequest>(bytes, |m| {
            let fields = [("name", reason(&UserName::parse(&m.name)))];
            outcome(parse::get_user(m.clone()), &fields, |n| {
                assert_eq!(Some(n), check_name(&m.name));
            });
        }),
        2 => decoded::<pb::VerifyPasswordRequest>(bytes, |m| {
            let fields = [
                ("name", reason(&UserName::parse(&m.name))),
                (
                    "password",
                    reason(&Password::parse_candidate(m.password.clone())),
                ),
            ];
            outcome(
                parse::verify_password(m.clone()).map(|(n, _)| n),
                &fields,
                |n| {
                    assert_eq!(n.key(), UserName::parse(&m.name).unwrap().key());
                },
            );
        }),
        3 => decoded::<pb::ChangePasswordRequest>(bytes, |m| {
            let name = UserName::parse(&m.name);
            let fields = [
                ("name", reason(&name)),
                (
                    "current_password",
                    reason(&Password::parse_candidate(m.current_password.clone())),
                ),
                (
                    "new_password",
                    reason(&Password::parse_new(
                        m.new_password.clone(),
                        name.as_ref().ok(),
                    )),
                ),
                ("request_id", reason(&RequestId::parse(&m.request_id))),
            ];
            outcome(
                parse::change_password(m.clone()).map(|(n, _, _, id)| (n, id)),
                &fields,
                |(n, id)| {
                    assert_eq!(n.key(), name.as_ref().unwrap().key());
                    assert_eq!(id, RequestId::parse(&m.request_id).unwrap());
                },
            );
        }),
        4 => decoded::<pb::DeleteUserRequest>(bytes, |m| {
            let fields = [
                ("name", reason(&UserName::parse(&m.name))),
                ("request_id", reason(&RequestId::parse(&m.request_id))),
            ];
            outcome(parse::delete_user(m.clone()), &fields, |(n, id)| {
                assert_eq!(n.key(), UserName::parse(&m.name).unwrap().key());
                assert_eq!(id, RequestId::parse(&m.request_id).unwrap());
            });
        }),
        5 => decoded::<pb::ListUsersRequest>(bytes, |m| {
            let size = PageSize::parse(
                m.page_size,
                parse::LIST_USERS_DEFAULT,
                parse::LIST_USERS_MAX,
            );
            let cursor = UserCursor::parse(&m.page_token);
            let fields = [
                ("page_size", reason(&size)),
                ("page_token", reason(&cursor)),
            ];
            check_user_cursor(&m.page_token);
            outcome(parse::list_users(m.clone()), &fields, |(s, c)| {
                assert!((1..=parse::LIST_USERS_MAX).contains(&s.get()));
                assert_eq!(Ok(s), size);
                assert_eq!(Ok(c), cursor);
            });
        }),
        6 => decoded::<pb::RecordGameRequest>(bytes, |m| {
            let fields = [
                ("name", reason(&UserName::parse(&m.name))),
                ("outcome", reason(&Outcome::parse(m.outcome))),
                ("score", reason(&Score::parse(m.score))),
                ("request_id", reason(&RequestId::parse(&m.request_id))),
            ];
            outcome(parse::record_game(m.clone()), &fields, |(n, o, s, id)| {
                assert_eq!(n.key(), UserName::parse(&m.name).unwrap().key());
                assert_eq!(Ok(o), Outcome::parse(m.outcome));
                assert_eq!(s.get(), m.score);
                assert_eq!(id, RequestId::parse(&m.request_id).unwrap());
            });
        }),
        7 => decoded::<pb::GetUserStatsRequest>(bytes, |m| {
            let fields = [("name", reason(&UserName::parse(&m.name)))];
            outcome(parse::get_user_stats(m.clone()), &fields, |n| {
                assert_eq!(n.key(), UserName::parse(&m.name).unwrap().key());
            });
        }),
        8 => decoded::<pb::ListLeaderboardRequest>(bytes, |m| {
            let size = PageSize::parse_page(m.page_size);
            // The token is only looked at with a valid page size.
            let token = size
                .as_ref()
                .ok()
                .and_then(|&size| reason(&PageToken::decode(&m.page_token, size)));
            let fields = [("page_size", reason(&size)), ("page_token", token)];
            check_board_token(&m.page_token);
            outcome(
                parse::list_leaderboard(m.clone()),
                &fields,
                |(s, offset)| {
                    assert!((1..=PageSize::BOARD_MAX).contains(&s.get()));
                    assert_eq!(Ok(offset), PageToken::decode(&m.page_token, s));
                },
            );
        }),
        _ => decoded::<pb::ListLeaderboardAroundUserRequest>(bytes, |m| {
            let fields = [
                ("name", reason(&UserName::parse(&m.name))),
                ("page_size", reason(&PageSize::parse_window(m.page_size))),
            ];
            outcome(
                parse::list_leaderboard_around_user(m.clone()),
                &fields,
                |(n, s)| {
                    assert_eq!(n.key(), UserName::parse(&m.name).unwrap().key());
                    assert!((1..=PageSize::BOARD_MAX).contains(&s.get()));
                },
            );
        }),
    }
}

/// Decodes `bytes` as `M` (what tonic's codec does; a failure is tonic's
/// INTERNAL, outside Roster) and checks the message's round trip.
fn decoded<M: Message + Default + PartialEq + Clone>(bytes: &[u8], check: impl FnOnce(&M)) {
    let Ok(message) = M::decode(bytes) else {
        return;
    };
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(again == message, "protobuf round trip");
    check(&message);
}

/// Checks a handler's parse against the per-field results.
fn outcome<T>(
    result: Result<T, Error>,
    fields: &[(&'static str, Option<&'static str>)],
    ok: impl FnOnce(T),
) {
    let want = expected(fields);
    match result {
        Ok(value) => {
            assert!(want.is_empty(), "accepted despite {want:?}");
            ok(value);
        }
        Err(error) => {
            let got: Vec<_> = match &error {
                Error::InvalidArgument(violations) => {
                    violations.iter().map(|v| (v.field, v.reason)).collect()
                }
                other => panic!("request parsing failed with {other:?}, not INVALID_ARGUMENT"),
            };
            assert_eq!(got, want, "every bad field, in order");
            check_status(error, &want);
        }
    }
}
