//! Property tests over the parsers at the edge, with large case counts: the
//! invariants the fuzz targets in `fuzz/` assert, on generated input.
//! `ROSTER_PROPTEST_CASES=N` runs every property N times instead (e.g.
//! 1000000 for a long run); the defaults keep the suite to a few seconds.

use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

use crate::{
    credentials::{HashPolicy, PasswordHasher, parse_stored},
    domain::{
        Invalid, Outcome, PageSize, PageToken, Password, RequestId, Score, UserCursor, UserName,
    },
    error::Error,
    grpc::parse,
    proto::roster::v1 as pb,
};

/// `default` cases, or `ROSTER_PROPTEST_CASES`.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("ROSTER_PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

/// Characters the rules treat specially, mixed with plain ASCII and anything.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('!', '~'),
        4 => proptest::sample::select(vec![
            'ß', 'ǅ', 'Ⅻ', 'ﬁ', 'ｱ', 'Ａ', 'ａ', 'é', 'E', '\u{301}', '\u{308}', '\u{200B}',
            '\u{200D}', '\u{AD}', '\u{202E}', '\u{2066}', '\u{61C}', '\u{0}', '\u{7F}', ' ',
            '\u{3000}', '\u{A0}', 'а', 'о', 'р', 'Σ', 'ς', 'İ', 'ı', '\u{212A}', '\u{212B}',
            'µ', 'ŉ', 'ǰ', '\u{FB00}', '🔑', '山', 'ー', '\u{378}', '\u{E000}', '\u{10FFFF}',
            '\u{FFFD}', '\u{1D400}', '\u{1100}', '\u{1161}', '\u{11A8}', '\u{0915}',
            '\u{094D}', '\u{0937}', 'ǈ', 'Ꭰ', '\u{2126}', ':', '/', '=', '+', '-', '0',
            'Ω', 'ω', 'Α', '\u{345}', '\u{31F}',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(tricky_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

fn reason<T>(result: &Result<T, Invalid>) -> Option<&'static str> {
    result.as_ref().err().map(|invalid| invalid.reason)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The name invariants (the fuzz target `user_name` asserts the same).
fn check_name(raw: &str) -> Result<(), TestCaseError> {
    let name = match UserName::parse(raw) {
        Err(invalid) => {
            if raw.len() > UserName::MAX_BYTES {
                prop_assert_eq!(invalid.reason, "NAME_TOO_LONG");
            }
            let ascii = raw.bytes().all(|b| (0x21..=0x7E).contains(&b));
            prop_assert!(!(ascii && !raw.is_empty() && raw.len() <= 64), "{:?}", raw);
            return Ok(());
        }
        Ok(name) => name,
    };
    let key = name.key().as_str();
    prop_assert!((1..=UserName::MAX_CODE_POINTS).contains(&key.chars().count()));
    for text in [key, name.display()] {
        prop_assert!(text.nfc().eq(text.chars()), "{:?} is not NFC", text);
        prop_assert!(
            !text
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || is_bidi_control(c))
        );
    }
    let again = UserName::parse(key).expect("a key is a name");
    prop_assert_eq!(again.key(), name.key(), "the key of a key is itself");
    let shown = UserName::parse(name.display()).expect("a display name is a name");
    prop_assert_eq!(shown.key(), name.key(), "the display form keeps the key");
    let token = UserCursor::after(name.key().clone()).encode();
    let cursor = UserCursor::parse(&token)
        .expect("our cursor")
        .expect("a cursor");
    prop_assert_eq!(cursor.key(), name.key());
    Ok(())
}

/// The board-token invariants (the fuzz target `page_token` asserts the same).
fn check_board_token(raw: &str) -> Result<(), TestCaseError> {
    let mut accepted = Vec::new();
    let mut mismatches = 0;
    for requested in 1..=PageSize::BOARD_MAX as i32 {
        let size = PageSize::parse_page(requested).expect("a page size");
        match PageToken::decode(raw, size) {
            Ok(offset) if raw.is_empty() => prop_assert_eq!(offset, 0),
            Ok(offset) => {
                prop_assert_eq!(
                    PageToken::new(size, offset).encode(),
                    raw,
                    "a decoded token re-encodes to itself"
                );
                prop_assert!(offset.is_multiple_of(u64::from(size.get())));
                let next = offset.checked_add(u64::from(size.get()));
                prop_assert!(
                    next.is_some_and(|next| i64::try_from(next).is_ok()),
                    "offset {} is beyond any board",
                    offset
                );
                accepted.push(size.get());
            }
            Err(invalid) if invalid.reason == "PAGE_TOKEN_PAGE_SIZE_MISMATCH" => mismatches += 1,
            Err(invalid) => prop_assert_eq!(invalid.reason, "PAGE_TOKEN_INVALID"),
        }
    }
    prop_assert!(accepted.len() <= 1, "one token, one page size");
    if accepted.is_empty() {
        prop_assert_eq!(mismatches, 0);
    }
    Ok(())
}

fn check_user_cursor(raw: &str) -> Result<(), TestCaseError> {
    match UserCursor::parse(raw) {
        Ok(None) => prop_assert!(raw.is_empty()),
        Ok(Some(cursor)) => {
            prop_assert_eq!(
                cursor.encode(),
                raw,
                "a decoded cursor re-encodes to itself"
            );
            let name = UserName::parse(cursor.key().as_str()).expect("a cursor holds a name");
            prop_assert_eq!(name.key(), cursor.key());
        }
        Err(invalid) => prop_assert_eq!(invalid.reason, "PAGE_TOKEN_INVALID"),
    }
    Ok(())
}

/// A board token's text: `lb1:SIZE:OFFSET` with near misses in every part.
fn token_text() -> impl Strategy<Value = String> {
    let number = "[+-]?0{0,2}[0-9]{1,20}";
    (
        prop_oneof![Just("lb1"), Just("lb2"), Just("LB1"), Just("")],
        number,
        number,
        prop_oneof![Just(""), Just(":"), Just(":0")],
    )
        .prop_map(|(version, size, offset, tail)| format!("{version}:{size}:{offset}{tail}"))
}

fn base64(text: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(text)
}

/// The 100,000 common passwords, as shipped.
static COMMON_PASSWORDS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    include_str!("domain/common-passwords.txt")
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect()
});

/// A PHC string with near misses in every part.
fn phc_text() -> impl Strategy<Value = String> {
    let cost = prop_oneof![
        0u64..40,
        Just(19456),
        Just(u64::from(u32::MAX)),
        Just(1 << 33)
    ];
    (
        prop_oneof![
            Just("argon2id"),
            Just("argon2i"),
            Just("argon2d"),
            Just("scrypt"),
        ],
        prop_oneof![Just("v=19$"), Just("v=16$"), Just(""), Just("v=20$")],
        (cost.clone(), cost.clone(), cost),
        // A repeated parameter too: the PHC parser takes it, argon2 uses the last.
        "(,keyid=[A-Za-z0-9]{0,12})?(,data=[A-Za-z0-9+/]{0,20})?(,[mtp]=[0-9]{1,10})?",
        "[A-Za-z0-9+/]{0,70}",
        "[A-Za-z0-9+/]{0,90}",
    )
        .prop_map(|(algorithm, version, (m, t, p), extra, salt, hash)| {
            format!("${algorithm}${version}m={m},t={t},p={p}{extra}${salt}${hash}")
        })
}

/// The stored-hash invariants (the fuzz target `phc` asserts the same).
fn check_phc(raw: &str) -> Result<(), TestCaseError> {
    let Ok((parsed, pooled)) = parse_stored(raw) else {
        return Ok(());
    };
    let text = parsed.to_string();
    prop_assert_eq!(
        &argon2::PasswordHash::new(&text).expect("round trip"),
        &parsed
    );
    let Some(pooled) = pooled else {
        return Ok(());
    };
    let params = &pooled.params;
    prop_assert_eq!(params.output_len(), Some(pooled.expected.len()));
    prop_assert!(params.block_count() as u64 <= u64::from(params.m_cost()));
    prop_assert!((1..=64).contains(&pooled.salt().len()));
    let rebuilt = argon2::Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        params.output_len(),
    );
    prop_assert!(rebuilt.is_ok());
    Ok(())
}

/// A handler's parse against the per-field results, and the status it gives.
fn check_parse<T>(
    result: Result<T, Error>,
    fields: &[(&'static str, Option<&'static str>)],
) -> Result<Option<T>, TestCaseError> {
    use tonic_types::StatusExt;
    let want: Vec<(&str, &str)> = fields
        .iter()
        .filter_map(|&(field, reason)| reason.map(|reason| (field, reason)))
        .collect();
    match result {
        Ok(value) => {
            prop_assert!(want.is_empty(), "accepted despite {:?}", want);
            Ok(Some(value))
        }
        Err(Error::InvalidArgument(violations)) => {
            let got: Vec<(&str, &str)> = violations.iter().map(|v| (v.field, v.reason)).collect();
            prop_assert_eq!(&got, &want, "every bad field, in order");
            let status = tonic::Status::from(Error::InvalidArgument(violations));
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let bad = status.get_details_bad_request().expect("BadRequest");
            prop_assert_eq!(bad.field_violations.len(), want.len());
            let mut headers = tonic::metadata::MetadataMap::new().into_headers();
            prop_assert!(status.add_header(&mut headers).is_ok());
            let back = tonic::Status::from_header_map(&headers).expect("a status");
            prop_assert_eq!(back.message(), status.message());
            prop_assert_eq!(back.details(), status.details());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("{other:?}"))),
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn names_are_canonical_idempotent_and_within_limits(raw in tricky_string(24)) {
        check_name(&raw)?;
    }

    #[test]
    fn long_names_hit_the_limits_not_a_panic(
        raw in prop_oneof!["[a-zA-Z0-9]{60,70}", "[а-я]{60,70}", "[ａ-ｚ]{60,130}"]
    ) {
        check_name(&raw)?;
        let name = UserName::parse(&raw);
        if raw.chars().count() > UserName::MAX_CODE_POINTS && raw.is_ascii() {
            prop_assert_eq!(reason(&name), Some("NAME_TOO_LONG"));
        }
    }

    #[test]
    fn passwords_follow_rule_v1_and_are_kept_in_nfc(
        name in tricky_string(10), raw in tricky_string(20)
    ) {
        let normalized: String = raw.nfc().collect();
        let candidate = Password::parse_candidate(raw.clone());
        prop_assert_eq!(reason(&candidate), normalized.is_empty().then_some("PASSWORD_EMPTY"));
        let rule = Password::parse(raw.clone());
        let short = normalized.chars().count() < Password::MIN_CODE_POINTS;
        prop_assert_eq!(reason(&rule), short.then_some("PASSWORD_TOO_SHORT"));
        if let Ok(password) = &rule {
            prop_assert_eq!(password.expose(), normalized.as_str(), "kept in NFC");
            prop_assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        }
        let name = UserName::parse(&name).ok();
        let anyone = Password::parse_new(raw.clone(), None);
        let for_name = Password::parse_new(raw.clone(), name.as_ref());
        if rule.is_err() {
            prop_assert_eq!(reason(&anyone), reason(&rule));
            prop_assert_eq!(reason(&for_name), reason(&rule));
        } else {
            let common = reason(&anyone) == Some("PASSWORD_TOO_COMMON");
            let folded = normalized.to_lowercase();
            let is_name = name.as_ref().is_some_and(|name| {
                folded == name.key().as_str() || folded == name.display().to_lowercase()
            });
            let expected = if common {
                Some("PASSWORD_TOO_COMMON")
            } else {
                is_name.then_some("PASSWORD_IS_NAME")
            };
            prop_assert_eq!(reason(&for_name), expected);
        }
    }

    #[test]
    fn request_ids_are_kept_as_sent_within_64_bytes(raw in tricky_string(70)) {
        match RequestId::parse(&raw) {
            Ok(None) => prop_assert!(raw.is_empty()),
            Ok(Some(id)) => {
                prop_assert_eq!(id.as_str(), raw.as_str());
                prop_assert!(raw.len() <= RequestId::MAX_BYTES);
                prop_assert!(!raw.chars().any(char::is_control));
            }
            Err(invalid) if raw.len() > RequestId::MAX_BYTES => {
                prop_assert_eq!(invalid.reason, "REQUEST_ID_TOO_LONG");
            }
            Err(invalid) => {
                prop_assert_eq!(invalid.reason, "REQUEST_ID_INVALID_CHARACTER");
                prop_assert!(raw.chars().any(char::is_control));
            }
        }
    }

    #[test]
    fn scores_and_outcomes_accept_exactly_their_ranges(score: i64, outcome: i32) {
        prop_assert_eq!(Score::parse(score).is_ok(), (0..=Score::MAX).contains(&score));
        prop_assert_eq!(Outcome::parse(outcome).is_ok(), (1..=3).contains(&outcome));
    }

    #[test]
    fn issued_board_tokens_round_trip_with_their_page_size_only(
        size in 1i32..=100, page in 0u64..1_000_000_000_000, other in 1i32..=100
    ) {
        let size = PageSize::parse_page(size).unwrap();
        let offset = page * u64::from(size.get());
        let token = PageToken::new(size, offset).encode();
        prop_assert_eq!(PageToken::decode(&token, size), Ok(offset));
        let other = PageSize::parse_page(other).unwrap();
        if other != size {
            prop_assert_eq!(
                reason(&PageToken::decode(&token, other)),
                Some("PAGE_TOKEN_PAGE_SIZE_MISMATCH")
            );
        }
        check_board_token(&token)?;
    }

    #[test]
    fn forged_board_tokens_are_refused_or_canonical(text in token_text()) {
        check_board_token(&base64(&text))?;
    }

    #[test]
    fn arbitrary_page_tokens_are_refused_or_canonical(raw in tricky_string(24)) {
        check_board_token(&raw)?;
        check_user_cursor(&raw)?;
    }

    #[test]
    fn forged_user_cursors_are_refused_or_canonical(key in tricky_string(12)) {
        check_user_cursor(&base64(&format!("users/v1/{key}")))?;
    }

    #[test]
    fn stored_hashes_parse_as_verify_parses_them(raw in phc_text()) {
        check_phc(&raw)?;
    }

    #[test]
    fn handlers_report_every_bad_field(
        name in tricky_string(10),
        password in tricky_string(12),
        new_password in tricky_string(12),
        request_id in tricky_string(8),
        number: i64,
        page_size in prop_oneof![-2i32..120, any::<i32>()],
        token in prop_oneof![tricky_string(8), token_text().prop_map(|t| base64(&t))],
    ) {
        let user = UserName::parse(&name);
        let id = RequestId::parse(&request_id);
        let created = parse::create_user(pb::CreateUserRequest {
            name: name.clone(),
            password: password.clone(),
            request_id: request_id.clone(),
        });
        check_parse(created, &[
            ("name", reason(&user)),
            ("password", reason(&Password::parse_new(password.clone(), user.as_ref().ok()))),
            ("request_id", reason(&id)),
        ])?;
        let changed = parse::change_password(pb::ChangePasswordRequest {
            name: name.clone(),
            current_password: password.clone(),
            new_password: new_password.clone(),
            request_id: request_id.clone(),
        });
        check_parse(changed, &[
            ("name", reason(&user)),
            ("current_password", reason(&Password::parse_candidate(password.clone()))),
            ("new_password", reason(&Password::parse_new(new_password, user.as_ref().ok()))),
            ("request_id", reason(&id)),
        ])?;
        let recorded = parse::record_game(pb::RecordGameRequest {
            name: name.clone(),
            outcome: number as i32,
            score: number,
            request_id: request_id.clone(),
        });
        check_parse(recorded, &[
            ("name", reason(&user)),
            ("outcome", reason(&Outcome::parse(number as i32))),
            ("score", reason(&Score::parse(number))),
            ("request_id", reason(&id)),
        ])?;
        let size = PageSize::parse_page(page_size);
        let listed = parse::list_leaderboard(pb::ListLeaderboardRequest {
            page_size,
            page_token: token.clone(),
        });
        let token_reason = size
            .as_ref()
            .ok()
            .and_then(|&size| reason(&PageToken::decode(&token, size)));
        check_parse(listed, &[("page_size", reason(&size)), ("page_token", token_reason)])?;
        let users = parse::list_users(pb::ListUsersRequest { page_size, page_token: token.clone() });
        check_parse(users, &[
            ("page_size", reason(&PageSize::parse(
                page_size, parse::LIST_USERS_DEFAULT, parse::LIST_USERS_MAX,
            ))),
            ("page_token", reason(&UserCursor::parse(&token))),
        ])?;
        let around = parse::list_leaderboard_around_user(pb::ListLeaderboardAroundUserRequest {
            name,
            page_size,
        });
        check_parse(around, &[
            ("name", reason(&user)),
            ("page_size", reason(&PageSize::parse_window(page_size))),
        ])?;
    }
}

proptest! {
    // Long inputs, or a 100,000-line list: fewer cases.
    #![proptest_config(cases(300))]

    #[test]
    fn the_byte_cap_comes_first(raw in "[a-zé🔑 ]{250,1100}") {
        let over = raw.len() > Password::MAX_BYTES;
        for result in [
            Password::parse(raw.clone()),
            Password::parse_candidate(raw.clone()),
            Password::parse_new(raw.clone(), None),
        ] {
            prop_assert_eq!(reason(&result) == Some("PASSWORD_TOO_LONG"), over);
        }
    }

    #[test]
    fn every_common_password_is_refused_in_any_ascii_case(
        index in 0usize..100_000, flips: u64
    ) {
        let list = &*COMMON_PASSWORDS;
        let word = list[index % list.len()];
        let cased: String = word
            .chars()
            .enumerate()
            .map(|(i, c)| if flips >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        let result = Password::parse_new(cased, None);
        if Password::parse(word.to_owned()).is_ok() {
            prop_assert_eq!(reason(&result), Some("PASSWORD_TOO_COMMON"), "{}", word);
        }
    }
}

proptest! {
    // Each case hashes a password (at argon2's smallest cost).
    #![proptest_config(cases(48))]

    #[test]
    fn our_own_hashes_parse_with_the_policy_they_were_made_with(
        raw in "[a-z]{8,20}", memory_kib in 8u32..64, iterations in 1u32..3
    ) {
        let policy = HashPolicy { memory_kib, iterations, parallelism: 1 };
        let hasher = PasswordHasher::new(policy, 1).unwrap();
        let hash = hasher.hash_blocking(&Password::parse(raw).unwrap()).unwrap();
        let (_, pooled) = parse_stored(hash.as_phc()).unwrap();
        let pooled = pooled.expect("argon2id v19 with salt and tag");
        prop_assert_eq!(pooled.params.m_cost(), memory_kib);
        prop_assert_eq!(pooled.params.t_cost(), iterations);
        prop_assert_eq!(pooled.salt().len(), 16);
        check_phc(hash.as_phc())?;
    }
}
