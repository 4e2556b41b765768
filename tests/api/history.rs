//! A Jepsen-style history checker. Concurrent clients, each the only writer
//! of its own users, call Roster (any replica) and log every call's
//! invocation and completion. Writes carry a request_id and are retried
//! with it until they get a definite answer, so each user's writes form
//! one known sequence of states. Afterwards the checker asserts:
//! - durability: the database holds, for every user, the state of its last
//!   acknowledged write (or of a later write whose answer never came);
//! - nothing that was never sent appears (no other users, no other ids, no
//!   more games than were sent);
//! - no stale read: a read returns a state at least as new as the last
//!   write acknowledged before the read began, and no newer than the last
//!   write begun before it ended (per user, a read-after-write check across
//!   replicas).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use roster::proto::roster::v1::{
    self as pb, GameOutcome, leaderboard_service_client::LeaderboardServiceClient,
    user_service_client::UserServiceClient,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

use crate::helpers::PASSWORD;

/// A user's observable state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// The user's id and update_time while the user exists.
    pub user: Option<(String, i64)>,
    /// Games recorded for the current user.
    pub games: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    Create,
    ChangePassword,
    Delete,
    Game,
}

/// One logical write (one request_id, retried until answered).
#[derive(Debug, Clone)]
struct Write {
    kind: WriteKind,
    invoked: Instant,
    /// When it was acknowledged, and the state it produced.
    acked: Option<(Instant, State)>,
    /// A definite refusal: nothing was written (e.g. STORAGE_FULL).
    refused: Option<Code>,
}

/// One read and what it saw.
#[derive(Debug, Clone)]
struct Read {
    user: usize,
    invoked: Instant,
    completed: Instant,
    /// `Some(state-ish)`: for GetUser only `user` is meaningful, for
    /// GetUserStats both. `None`: the read failed.
    seen: Option<Seen>,
    replica: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    User(Option<(String, i64)>),
    Stats(Option<(String, i64)>),
}

/// What a run's clients did, for the checks and the README's figures.
#[derive(Default)]
pub struct History {
    writes: HashMap<usize, Vec<Write>>,
    reads: Vec<Read>,
    /// Calls answered with a code the promises forbid (INTERNAL).
    pub forbidden: Vec<String>,
    /// Every answer code, counted.
    pub codes: HashMap<String, usize>,
    /// The longest call.
    pub longest: Duration,
    names: HashMap<usize, String>,
    prefix: String,
}

/// The outcome of the checks.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Writes definitely refused (nothing written).
    pub refused: usize,
    /// Writes whose answer never came.
    pub unknown: usize,
    /// Acknowledged writes the database does not reflect.
    pub lost: Vec<String>,
    /// Things in the database nobody wrote.
    pub phantoms: Vec<String>,
    /// Reads that returned an older state than an acknowledged write.
    pub stale: Vec<String>,
    /// Reads that succeeded.
    pub reads: usize,
    /// The longest call.
    pub longest: Duration,
}

impl Verdict {
    /// Panics, with every violation, unless there is none.
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.lost.is_empty() && self.phantoms.is_empty() && self.stale.is_empty(),
            "{what}: lost {:?}\nphantoms {:?}\nstale {:?}",
            self.lost,
            self.phantoms,
            self.stale
        );
    }
}

/// The workload: `clients` writers, each owning `users` names, calling any
/// of `replicas` for `duration`.
pub struct Workload {
    /// Name prefix, unique per test.
    pub prefix: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Users per client.
    pub users: usize,
    /// How long clients start new calls.
    pub duration: Duration,
    /// Per-call timeout.
    pub call_timeout: Duration,
    /// How long a write is retried after `duration` before it counts as
    /// unknown.
    pub settle: Duration,
    /// Random seed.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            prefix: "h".into(),
            clients: 6,
            users: 3,
            duration: Duration::from_secs(3),
            call_timeout: Duration::from_secs(3),
            settle: Duration::from_secs(20),
            seed: 7,
        }
    }
}

/// Runs `workload` against `replicas` (channels that reconnect by
/// themselves) and returns the history.
pub async fn run(workload: &Workload, replicas: &[Channel]) -> History {
    let history = Arc::new(Mutex::new(History {
        prefix: format!("{}-u", workload.prefix),
        ..History::default()
    }));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let replicas = replicas.to_vec();
        let history = Arc::clone(&history);
        let users: Vec<usize> = (0..workload.users)
            .map(|u| client * workload.users + u)
            .collect();
        let all = workload.clients * workload.users;
        let prefix = workload.prefix.clone();
        let (duration, timeout, settle) =
            (workload.duration, workload.call_timeout, workload.settle);
        let seed = workload.seed.wrapping_mul(1000).wrapping_add(client as u64);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut states: HashMap<usize, State> =
                users.iter().map(|u| (*u, State::default())).collect();
            let mut request = 0u64;
            while started.elapsed() < duration {
                if rng.random_bool(0.4) {
                    let user = rng.random_range(0..all);
                    let replica = rng.random_range(0..replicas.len());
                    let stats = rng.random_bool(0.5);
                    read(
                        &history,
                        &prefix,
                        user,
                        stats,
                        replica,
                        &replicas[replica],
                        timeout,
                    )
                    .await;
                    continue;
                }
                let user = users[rng.random_range(0..users.len())];
                let state = states[&user].clone();
                let kind = match (&state.user, rng.random_range(0..10)) {
                    (None, _) => WriteKind::Create,
                    (Some(_), 0) => WriteKind::Delete,
                    (Some(_), 1) => WriteKind::ChangePassword,
                    (Some(_), _) => WriteKind::Game,
                };
                request += 1;
                let request_id = format!("{prefix}-{client}-{request}");
                let deadline = started + duration + settle;
                let new = write(
                    &history,
                    &prefix,
                    user,
                    kind,
                    &state,
                    &request_id,
                    &replicas,
                    &mut rng,
                    timeout,
                    deadline,
                )
                .await;
                match new {
                    Some(Ok(new)) => {
                        states.insert(user, new);
                    }
                    Some(Err(())) => {}
                    // Unknown: this user's history ends here.
                    None => break,
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(history)
        .ok()
        .expect("every client finished")
        .into_inner()
        .unwrap()
}

fn name(prefix: &str, user: usize) -> String {
    format!("{prefix}-u{user}")
}

fn timed<T>(timeout: Duration, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Whether an error leaves the write's outcome unknown (retry it), rather
/// than a definite refusal.
fn is_unknown(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
    )
}

fn note(history: &Mutex<History>, began: Instant, code: &str) {
    let mut history = history.lock().unwrap();
    *history.codes.entry(code.to_owned()).or_default() += 1;
    history.longest = history.longest.max(began.elapsed());
    if code.starts_with("Internal") {
        history.forbidden.push(code.to_owned());
    }
}

fn code_name(status: &tonic::Status) -> String {
    let reason = status
        .get_details_error_info()
        .map(|info| format!(" {}", info.reason))
        .unwrap_or_default();
    format!("{:?}{reason}", status.code())
}

#[allow(clippy::too_many_arguments)]
async fn write(
    history: &Mutex<History>,
    prefix: &str,
    user: usize,
    kind: WriteKind,
    state: &State,
    request_id: &str,
    replicas: &[Channel],
    rng: &mut StdRng,
    timeout: Duration,
    deadline: Instant,
) -> Option<Result<State, ()>> {
    let name = name(prefix, user);
    let invoked = Instant::now();
    history.lock().unwrap().names.insert(user, name.clone());
    let index = {
        let mut history = history.lock().unwrap();
        let writes = history.writes.entry(user).or_default();
        writes.push(Write {
            kind,
            invoked,
            acked: None,
            refused: None,
        });
        writes.len() - 1
    };
    loop {
        let replica = &replicas[rng.random_range(0..replicas.len())];
        let began = Instant::now();
        let answer = call_write(replica, &name, kind, request_id, timeout).await;
        match answer {
            Ok(seen) => {
                note(history, began, "Ok");
                let mut new = state.clone();
                match (kind, seen) {
                    (WriteKind::Create, Seen::User(user)) => {
                        new = State { user, games: 0 };
                    }
                    (WriteKind::ChangePassword, Seen::User(user)) => new.user = user,
                    (WriteKind::Delete, _) => new = State::default(),
                    (WriteKind::Game, Seen::Stats(Some((_, games)))) => new.games = games,
                    _ => unreachable!("answers match their calls"),
                }
                let mut history = history.lock().unwrap();
                history.writes.get_mut(&user).unwrap()[index].acked =
                    Some((Instant::now(), new.clone()));
                return Some(Ok(new));
            }
            Err(status) => {
                note(history, began, &code_name(&status));
                if !is_unknown(&status) {
                    let mut history = history.lock().unwrap();
                    history.writes.get_mut(&user).unwrap()[index].refused = Some(status.code());
                    return Some(Err(()));
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..80))).await;
            }
        }
    }
}

async fn call_write(
    channel: &Channel,
    name: &str,
    kind: WriteKind,
    request_id: &str,
    timeout: Duration,
) -> Result<Seen, tonic::Status> {
    let mut users = UserServiceClient::new(channel.clone());
    let user_of =
        |user: Option<pb::User>| Seen::User(user.map(|u| (u.id, timestamp_micros(u.update_time))));
    match kind {
        WriteKind::Create => users
            .create_user(timed(
                timeout,
                pb::CreateUserRequest {
                    name: name.into(),
                    password: PASSWORD.into(),
                    request_id: request_id.into(),
                },
            ))
            .await
            .map(|r| user_of(r.into_inner().user)),
        WriteKind::ChangePassword => {
            // Alternate between two passwords: a request_id's retry after
            // the first attempt committed is replayed, never re-checked.
            let (current, new) = (PASSWORD, "another fine passphrase");
            let first = users
                .change_password(timed(
                    timeout,
                    pb::ChangePasswordRequest {
                        name: name.into(),
                        current_password: current.into(),
                        new_password: new.into(),
                        request_id: request_id.into(),
                    },
                ))
                .await;
            let answer = match first {
                Err(status) if status.code() == Code::Unauthenticated => {
                    users
                        .change_password(timed(
                            timeout,
                            pb::ChangePasswordRequest {
                                name: name.into(),
                                current_password: new.into(),
                                new_password: current.into(),
                                request_id: request_id.into(),
                            },
                        ))
                        .await
                }
                other => other,
            };
            answer.map(|r| user_of(r.into_inner().user))
        }
        WriteKind::Delete => users
            .delete_user(timed(
                timeout,
                pb::DeleteUserRequest {
                    name: name.into(),
                    request_id: request_id.into(),
                },
            ))
            .await
            .map(|_| Seen::User(None)),
        WriteKind::Game => LeaderboardServiceClient::new(channel.clone())
            .record_game(timed(
                timeout,
                pb::RecordGameRequest {
                    name: name.into(),
                    outcome: GameOutcome::Win.into(),
                    score: 1 + (request_id.len() as i64 % 7),
                    request_id: request_id.into(),
                },
            ))
            .await
            .map(|r| {
                let stats = r.into_inner().stats.unwrap_or_default();
                Seen::Stats(Some((stats.user_id, stats.games_played)))
            }),
    }
}

async fn read(
    history: &Mutex<History>,
    prefix: &str,
    user: usize,
    stats: bool,
    replica: usize,
    channel: &Channel,
    timeout: Duration,
) {
    let name = name(prefix, user);
    let invoked = Instant::now();
    let answer = if stats {
        LeaderboardServiceClient::new(channel.clone())
            .get_user_stats(timed(timeout, pb::GetUserStatsRequest { name }))
            .await
            .map(|r| {
                let stats = r.into_inner().stats.unwrap_or_default();
                Seen::Stats(Some((stats.user_id, stats.games_played)))
            })
    } else {
        UserServiceClient::new(channel.clone())
            .get_user(timed(timeout, pb::GetUserRequest { name }))
            .await
            .map(|r| {
                let user = r.into_inner().user.unwrap_or_default();
                Seen::User(Some((user.id, timestamp_micros(user.update_time))))
            })
    };
    let completed = Instant::now();
    let seen = match answer {
        Ok(seen) => {
            note(history, invoked, "Ok");
            Some(seen)
        }
        Err(status) if status.code() == Code::NotFound => {
            note(history, invoked, "NotFound");
            Some(if stats {
                Seen::Stats(None)
            } else {
                Seen::User(None)
            })
        }
        Err(status) => {
            note(history, invoked, &code_name(&status));
            None
        }
    };
    history.lock().unwrap().reads.push(Read {
        user,
        invoked,
        completed,
        seen,
        replica,
    });
}

fn timestamp_micros(ts: Option<prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |ts| ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000)
}

fn matches(state: &State, seen: &Seen) -> bool {
    match seen {
        Seen::User(user) => state.user == *user,
        Seen::Stats(None) => state.user.is_none(),
        // A user who has not played reads as zero games.
        Seen::Stats(Some((id, games))) => {
            state.user.as_ref().map(|(id, _)| id) == Some(id) && state.games == *games
        }
    }
}

impl History {
    /// The longest read (GetUser or GetUserStats), answered or not.
    pub fn longest_read(&self) -> Duration {
        self.reads
            .iter()
            .map(|read| read.completed - read.invoked)
            .max()
            .unwrap_or_default()
    }

    /// Successful reads so far.
    pub fn reads_ok(&self) -> usize {
        self.reads.iter().filter(|read| read.seen.is_some()).count()
    }

    /// How many calls were answered with `code` (e.g. "ResourceExhausted
    /// STORAGE_FULL").
    pub fn count(&self, code: &str) -> usize {
        self.codes.get(code).copied().unwrap_or(0)
    }

    /// Checks the history against the database (the truth) after the run.
    pub async fn check(&self, db: &DatabaseConnection) -> Verdict {
        self.check_within(db, Duration::ZERO).await
    }

    /// As [`Self::check`], but a read may miss a write acknowledged less
    /// than `bound` before it began (the staleness bound, for a writer cut
    /// off from Redis).
    pub async fn check_within(&self, db: &DatabaseConnection, bound: Duration) -> Verdict {
        let mut verdict = Verdict {
            longest: self.longest,
            ..Verdict::default()
        };
        // Each user's sequence of states after each write that may have
        // happened (acknowledged, or never answered), after "absent".
        let mut sequences: HashMap<usize, Vec<(&Write, State)>> = HashMap::new();
        for (user, writes) in &self.writes {
            let mut states = Vec::new();
            let mut current = State::default();
            for write in writes {
                match (&write.acked, write.refused) {
                    (Some((_, state)), _) => {
                        verdict.acknowledged += 1;
                        // Every acknowledged game counts exactly once: a
                        // jump means a refused or retried game counted too.
                        if write.kind == WriteKind::Game && state.games != current.games + 1 {
                            verdict.phantoms.push(format!(
                                "{}: a game took the count from {} to {}",
                                self.names[user], current.games, state.games
                            ));
                        }
                        current = state.clone();
                        states.push((write, current.clone()));
                    }
                    (None, Some(_)) => verdict.refused += 1,
                    (None, None) => {
                        verdict.unknown += 1;
                        // Only its kind is known (see `fits_unknown`).
                        states.push((write, current.clone()));
                    }
                }
            }
            sequences.insert(*user, states);
        }

        // Durability and phantoms, against the database.
        let in_db = database_state(db).await;
        for (user, states) in &sequences {
            let name = &self.names[user];
            let actual = in_db.get(name).cloned().unwrap_or_default();
            let last_acked = states.iter().rposition(|(w, _)| w.acked.is_some());
            let last = states.len().checked_sub(1);
            let ok = match (last_acked, last) {
                (None, None) => actual == State::default(),
                (acked, Some(last)) => {
                    let acked_state = acked.map(|i| states[i].1.clone()).unwrap_or_default();
                    let unknown_after = acked.is_none_or(|a| a < last);
                    actual_matches(&actual, &acked_state)
                        || (unknown_after
                            && fits_unknown(&actual, &acked_state, states[last].0.kind))
                }
                (Some(_), None) => unreachable!(),
            };
            if !ok {
                let expected = last_acked.map(|i| states[i].1.clone()).unwrap_or_default();
                verdict.lost.push(format!(
                    "{name}: database has {actual:?}, last acknowledged write left {expected:?}"
                ));
            }
        }
        for name in in_db.keys().filter(|name| name.starts_with(&self.prefix)) {
            if !self.names.values().any(|n| n == name) {
                verdict
                    .phantoms
                    .push(format!("{name} is in the database; no client wrote it"));
            }
        }

        // Stale reads.
        for read in &self.reads {
            let Some(seen) = &read.seen else { continue };
            verdict.reads += 1;
            let empty = Vec::new();
            let states = sequences.get(&read.user).unwrap_or(&empty);
            // Oldest allowed: the last write acknowledged before the read.
            let lower = states
                .iter()
                .rposition(|(w, _)| {
                    w.acked
                        .as_ref()
                        .is_some_and(|(at, _)| *at + bound < read.invoked)
                })
                .map_or(0, |i| i + 1);
            // Newest allowed: the last write begun before the read ended.
            let upper = states
                .iter()
                .rposition(|(w, _)| w.invoked < read.completed)
                .map_or(0, |i| i + 1);
            let candidates = std::iter::once((None, State::default()))
                .chain(states.iter().map(|(w, state)| (Some(*w), state.clone())))
                .enumerate()
                .filter(|(i, _)| *i >= lower && *i <= upper)
                .map(|(_, candidate)| candidate);
            let fine = candidates.clone().any(|(write, state)| match write {
                Some(write) if write.acked.is_none() => {
                    fits_unknown(&seen_as_state(seen, &state), &state, write.kind)
                }
                _ => matches(&state, seen),
            });
            if !fine {
                verdict.stale.push(format!(
                    "{} on replica {}: saw {seen:?}, allowed {:?}",
                    self.names.get(&read.user).cloned().unwrap_or_default(),
                    read.replica,
                    candidates.map(|(_, state)| state).collect::<Vec<_>>()
                ));
            }
        }
        verdict
    }
}

fn actual_matches(actual: &State, expected: &State) -> bool {
    actual == expected
}

/// What a read saw, as a state (fields it cannot see taken from `before`).
fn seen_as_state(seen: &Seen, before: &State) -> State {
    match seen {
        Seen::User(user) => State {
            user: user.clone(),
            games: before.games,
        },
        Seen::Stats(None) => State::default(),
        Seen::Stats(Some((id, games))) => State {
            user: Some((
                id.clone(),
                before.user.as_ref().map_or(0, |(_, time)| *time),
            )),
            games: *games,
        },
    }
}

/// Whether the database's state is what a write of `kind`, whose answer
/// never came, would leave after `before`.
fn fits_unknown(actual: &State, before: &State, kind: WriteKind) -> bool {
    match kind {
        WriteKind::Create => actual.user.is_some() && actual.games == 0,
        WriteKind::ChangePassword => {
            actual.user.as_ref().map(|u| &u.0) == before.user.as_ref().map(|u| &u.0)
                && actual.games == before.games
        }
        WriteKind::Delete => actual.user.is_none(),
        WriteKind::Game => actual.user == before.user && actual.games == before.games + 1,
    }
}

/// Every user's state in the database: id, update_time and games.
pub async fn database_state(db: &DatabaseConnection) -> HashMap<String, State> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT u.name AS name, u.id AS id, u.update_time AS update_time, \
             COALESCE(s.games_played, 0) AS games \
             FROM users u LEFT JOIN user_stats s ON s.user_id = u.id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("", "name").unwrap();
            let id: uuid::Uuid = row.try_get("", "id").unwrap();
            let update_time: chrono::DateTime<chrono::Utc> =
                row.try_get("", "update_time").unwrap();
            let games: i64 = row.try_get("", "games").unwrap();
            (
                name,
                State {
                    user: Some((id.to_string(), update_time.timestamp_micros())),
                    games,
                },
            )
        })
        .collect()
}
