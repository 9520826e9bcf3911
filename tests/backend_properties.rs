//! Property tests of the backends' delivery bookkeeping: under any sequence of
//! publishes, claims, completions, retries, dead letters, releases, lease expiries
//! and (SQLite) reopening the file as a restarted process would, nothing is lost,
//! nothing is completed twice, a lease is exclusive, and a FIFO group hands out
//! only its oldest unfinished delivery.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flowline::backend::{Action, Completion, DeadLetterQuery, FailureKind, Outcome};
use flowline::backend::{ClaimRequest, Claimed, NewDelivery, StepClaim};
use flowline::event::{Envelope, StepName};
use flowline::{Backend, MemoryBackend, Payload, SqliteBackend, TenantId, Timestamp};
use proptest::prelude::*;

const LEASE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Op {
    Publish {
        tenant: u8,
        group: Option<u8>,
        delay_ms: u64,
    },
    Claim {
        max: usize,
    },
    Complete {
        pick: usize,
        how: u8,
    },
    Release {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    /// Close the backend and open it again, as a restarted process would: every
    /// lease held is void. The memory backend has nothing to reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, prop::option::of(0u8..2), prop_oneof![Just(0u64), 0u64..3_000])
            .prop_map(|(tenant, group, delay_ms)| Op::Publish { tenant, group, delay_ms }),
        3 => (1usize..6).prop_map(|max| Op::Claim { max }),
        3 => (0usize..8, 0u8..3).prop_map(|(pick, how)| Op::Complete { pick, how }),
        1 => (0usize..8).prop_map(|pick| Op::Release { pick }),
        2 => prop_oneof![0u64..2_000, Just(11_000u64)].prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reopen),
    ]
}

/// Which backend a run uses.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Sqlite,
}

struct Model {
    backend: Arc<dyn Backend>,
    /// The SQLite file, and the directory that holds it while the run lasts.
    file: Option<(tempfile::TempDir, std::path::PathBuf)>,
    step: StepName,
    now: Timestamp,
    seq: u32,
    /// event sequence number -> (tenant, group)
    published: BTreeMap<u32, (u8, Option<u8>)>,
    committed: BTreeSet<u32>,
    dead: BTreeSet<u32>,
    /// Claims we hold, with the time they were claimed.
    held: Vec<(Claimed, Timestamp)>,
}

fn seq_of(c: &Claimed) -> u32 {
    c.event.payload.decode::<u32>().unwrap()
}

impl Model {
    fn new(kind: Kind) -> Self {
        let (backend, file): (Arc<dyn Backend>, _) = match kind {
            Kind::Memory => (Arc::new(MemoryBackend::new()), None),
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("props.db");
                let backend = SqliteBackend::open(&path).unwrap();
                (Arc::new(backend), Some((dir, path)))
            }
        };
        Model {
            backend,
            file,
            step: StepName::new("s").unwrap(),
            now: Timestamp::from_millis(1_000_000),
            seq: 0,
            published: BTreeMap::new(),
            committed: BTreeSet::new(),
            dead: BTreeSet::new(),
            held: Vec::new(),
        }
    }

    fn envelope(&self, tenant: u8, group: Option<u8>, delay_ms: u64) -> Envelope {
        let mut e: Envelope = serde_json::from_value(serde_json::json!({
            "id": uuid_for(self.seq),
            "topic": "t",
            "tenant": format!("tenant-{tenant}"),
            "trace_id": uuid_for(self.seq),
            "causation_id": null,
            "group_key": group.map(|g| format!("g{g}")),
            "emitted_at": self.now,
            "deliver_at": null,
            "headers": [],
            "payload": "0",
        }))
        .unwrap();
        e.payload = Payload::encode(&self.seq).unwrap();
        if delay_ms > 0 {
            e.deliver_at = Some(self.now + Duration::from_millis(delay_ms));
        }
        e
    }

    fn unfinished_in_group(&self, tenant: u8, group: u8) -> Option<u32> {
        self.published
            .iter()
            .filter(|(s, (t, g))| {
                *t == tenant
                    && *g == Some(group)
                    && !self.committed.contains(s)
                    && !self.dead.contains(s)
            })
            .map(|(s, _)| *s)
            .next()
    }

    async fn claim(&mut self, max: usize) -> Result<(), TestCaseError> {
        let batch = self
            .backend
            .claim(ClaimRequest {
                now: self.now,
                steps: vec![StepClaim {
                    step: self.step.clone(),
                    max,
                    lease: LEASE,
                }],
                tenant_quantum: 2,
            })
            .await
            .unwrap();
        prop_assert!(batch.deliveries.len() <= max);
        // Leases we hold that have not ended are exclusive.
        let live: BTreeSet<u32> = self
            .held
            .iter()
            .filter(|(_, at)| *at + LEASE > self.now)
            .map(|(c, _)| seq_of(c))
            .collect();
        for c in batch.deliveries {
            let seq = seq_of(&c);
            prop_assert!(
                !live.contains(&seq),
                "delivery {seq} claimed twice under live leases"
            );
            prop_assert!(
                !self.committed.contains(&seq) && !self.dead.contains(&seq),
                "finished delivery {seq} handed out again"
            );
            let (tenant, group) = self.published[&seq];
            if let Some(g) = group {
                prop_assert_eq!(
                    self.unfinished_in_group(tenant, g),
                    Some(seq),
                    "FIFO group handed out a later delivery first"
                );
            }
            self.held.retain(|(h, _)| seq_of(h) != seq);
            self.held.push((c, self.now));
        }
        Ok(())
    }

    async fn complete(&mut self, pick: usize, how: u8) -> Result<(), TestCaseError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let (c, claimed_at) = self.held.remove(pick % self.held.len());
        let seq = seq_of(&c);
        let action = match how {
            0 => Action::Commit {
                reads: vec![],
                writes: vec![],
                adds: vec![],
                emits: vec![],
                cancels: Vec::new(),
            },
            1 => Action::Retry {
                at: self.now + Duration::from_millis(500),
                error: "retry".into(),
            },
            _ => Action::DeadLetter {
                error: "dead".into(),
                at: self.now,
                kind: FailureKind::Exhausted,
                emits: Vec::new(),
            },
        };
        let outcome = self
            .backend
            .complete(vec![Completion {
                tenant: c.event.tenant.clone(),
                input: Some(c.lease),
                marker: None,
                action,
            }])
            .await
            .unwrap()
            .swap_remove(0);
        let lease_live = claimed_at + LEASE > self.now;
        if outcome == Outcome::Applied {
            prop_assert!(
                !self.committed.contains(&seq) && !self.dead.contains(&seq),
                "delivery {seq} completed twice"
            );
            match how {
                0 => {
                    self.committed.insert(seq);
                }
                1 => {}
                _ => {
                    self.dead.insert(seq);
                }
            }
        } else {
            prop_assert_eq!(outcome, Outcome::Stale);
            prop_assert!(!lease_live, "a live lease was refused");
        }
        Ok(())
    }

    /// Reopens the SQLite file; the leases held so far are void from now on.
    fn reopen(&mut self) {
        let Some((_, path)) = &self.file else {
            return;
        };
        // The file has one owner at a time: close it before opening it again.
        self.backend = Arc::new(MemoryBackend::new());
        self.backend = Arc::new(SqliteBackend::open(path).unwrap());
        for (_, claimed_at) in &mut self.held {
            *claimed_at = Timestamp::EPOCH;
        }
    }

    async fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..1_000 {
            self.now = self.now + Duration::from_secs(3_600);
            self.held.clear();
            self.claim(64).await?;
            if self.held.is_empty() {
                break;
            }
            while !self.held.is_empty() {
                self.complete(0, 0).await?;
            }
        }
        Ok(())
    }
}

fn uuid_for(seq: u32) -> String {
    format!("00000000-0000-7000-8000-{seq:012x}")
}

fn run(kind: Kind, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut m = Model::new(kind);
        for op in ops {
            match op {
                Op::Publish {
                    tenant,
                    group,
                    delay_ms,
                } => {
                    m.seq += 1;
                    let event = Arc::new(m.envelope(tenant, group, delay_ms));
                    m.published.insert(m.seq, (tenant, group));
                    let due_at = event.due_at();
                    let d = NewDelivery {
                        step: m.step.clone(),
                        group: event.group_key.clone(),
                        event,
                        due_at,
                        key: None,
                    };
                    m.backend.publish(vec![d]).await.unwrap();
                }
                Op::Claim { max } => m.claim(max).await?,
                Op::Complete { pick, how } => m.complete(pick, how).await?,
                Op::Release { pick } => {
                    if !m.held.is_empty() {
                        let (c, _) = m.held.remove(pick % m.held.len());
                        m.backend.release(&[c.lease]).await.unwrap();
                    }
                }
                Op::Advance { ms } => m.now = m.now + Duration::from_millis(ms),
                Op::Reopen => m.reopen(),
            }
        }
        m.drain().await?;
        // Nothing lost: every published delivery finished exactly once.
        let finished: BTreeSet<u32> = m.committed.union(&m.dead).copied().collect();
        let all: BTreeSet<u32> = m.published.keys().copied().collect();
        prop_assert_eq!(finished, all);
        prop_assert!(m.committed.is_disjoint(&m.dead));
        let depth = m.backend.depth(m.now).await.unwrap();
        prop_assert_eq!(depth.pending(), 0);
        let dead = m
            .backend
            .dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap();
        prop_assert_eq!(dead.len(), m.dead.len());
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn memory_loses_nothing_does_nothing_twice_keeps_leases_and_groups(ops in prop::collection::vec(op(), 1..120)) {
        run(Kind::Memory, ops)?;
    }
}

proptest! {
    // Fewer cases: each opens files and commits transactions.
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sqlite_loses_nothing_does_nothing_twice_even_across_reopens(ops in prop::collection::vec(op(), 1..120)) {
        run(Kind::Sqlite, ops)?;
    }
}

#[test]
fn claims_rotate_across_tenants() {
    for kind in [Kind::Memory, Kind::Sqlite] {
        claims_rotate_across_tenants_on(kind);
    }
}

fn claims_rotate_across_tenants_on(kind: Kind) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut m = Model::new(kind);
        for tenant in [0u8, 0, 0, 0, 0, 0, 1, 2] {
            m.seq += 1;
            let event = Arc::new(m.envelope(tenant, None, 0));
            m.published.insert(m.seq, (tenant, None));
            let due_at = event.due_at();
            m.backend
                .publish(vec![NewDelivery {
                    step: m.step.clone(),
                    group: None,
                    event,
                    due_at,
                    key: None,
                }])
                .await
                .unwrap();
        }
        m.claim(6).await.unwrap();
        let mut per_tenant: HashMap<TenantId, usize> = HashMap::new();
        for (c, _) in &m.held {
            *per_tenant.entry(c.event.tenant.clone()).or_default() += 1;
        }
        assert_eq!(
            per_tenant.len(),
            3,
            "{kind:?}: all three tenants served in one claim: {per_tenant:?}"
        );
    });
}
