//! Flows: the registered steps, validated as a graph before anything runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::failure::FailureHook;
use super::flow_control::{Limit, LimitError};
pub use super::flow_error::{FlowError, FlowWarning};
use super::step::{Handler, Step, StepConfig, Trigger};
use crate::api::{Method, PathPattern};
use crate::backend::NewDelivery;
use crate::cron::{CronTick, Schedule};
use crate::event::{cancel_key, Envelope, Event, StepName, Topic};

/// Collects steps; [`FlowBuilder::build`] validates them into a [`Flow`].
///
/// ```
/// use flowline::{Event, Flow, Step, StepContext, StepError};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct Hello { name: String }
/// impl Event for Hello { const TOPIC: &'static str = "hello"; }
///
/// let flow = Flow::builder()
///     .external::<Hello>()
///     .step(Step::event::<Hello>("greet").handle(|_ctx: StepContext, hello: Hello| async move {
///         println!("hello, {}", hello.name);
///         Ok::<_, StepError>(())
///     }))
///     .build()
///     .unwrap();
/// assert!(flow.warnings().is_empty());
/// assert!(flow.to_mermaid().contains("greet"));
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct FlowBuilder {
    steps: Vec<Step>,
    external: Vec<String>,
    deny_warnings: bool,
}

impl FlowBuilder {
    /// Registers a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Registers several steps.
    pub fn steps(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.steps.extend(steps);
        self
    }

    /// Declares that events of `E` come from outside the flow (via `Engine::emit`).
    pub fn external<E: Event>(mut self) -> Self {
        self.external.push(E::TOPIC.to_string());
        self
    }

    /// Declares an external topic by name.
    pub fn external_topic(mut self, topic: impl Into<String>) -> Self {
        self.external.push(topic.into());
        self
    }

    /// Makes [`build`](Self::build) fail on warnings.
    pub fn deny_warnings(mut self) -> Self {
        self.deny_warnings = true;
        self
    }

    /// Validates the graph.
    ///
    /// # Errors
    /// The first [`FlowError`] found, in registration order.
    pub fn build(mut self) -> Result<Flow, FlowError> {
        self.steps = with_companions(self.steps)?;
        let mut steps = Vec::with_capacity(self.steps.len());
        let mut by_name = HashMap::new();
        let mut subscribers: HashMap<Topic, Vec<usize>> = HashMap::new();
        let mut routes: Vec<Route> = Vec::new();
        for (index, step) in self.steps.into_iter().enumerate() {
            let name = StepName::new(&step.name).map_err(|source| FlowError::InvalidStepName {
                step: step.name.clone(),
                source,
            })?;
            if by_name.insert(name.clone(), index).is_some() {
                return Err(FlowError::DuplicateStep(step.name));
            }
            let topic = |t: &str| {
                Topic::new(t).map_err(|source| FlowError::InvalidTopic {
                    step: step.name.clone(),
                    source,
                })
            };
            let emits = step
                .emits
                .iter()
                .map(|t| topic(t))
                .collect::<Result<BTreeSet<_>, _>>()?;
            let mut schedule = None;
            match &step.trigger {
                Trigger::Events(topics) => {
                    if topics.is_empty() {
                        return Err(FlowError::NoSubscription(step.name));
                    }
                    for t in topics {
                        subscribers.entry(topic(t)?).or_default().push(index);
                    }
                }
                Trigger::Cron {
                    expression,
                    time_zone,
                    ..
                } => {
                    schedule = Some(Schedule::parse(expression, time_zone).map_err(|source| {
                        FlowError::InvalidCron {
                            step: step.name.clone(),
                            source,
                        }
                    })?);
                }
                Trigger::Api { method, path } => {
                    let pattern =
                        PathPattern::parse(path).map_err(|reason| FlowError::InvalidPath {
                            step: step.name.clone(),
                            path: path.clone(),
                            reason,
                        })?;
                    if let Some(other) = routes
                        .iter()
                        .find(|r| r.method == *method && r.pattern == pattern)
                    {
                        return Err(FlowError::DuplicateRoute {
                            first: steps_name(&steps, other.step),
                            second: step.name,
                            method: *method,
                            path: path.clone(),
                        });
                    }
                    routes.push(Route {
                        method: *method,
                        pattern,
                        step: index,
                    });
                }
            }
            check_limits(&step)?;
            steps.push(Arc::new(StepRuntime {
                name,
                trigger: step.trigger,
                emits,
                config: step.config,
                limits: step.limits.into(),
                handler: step.handler,
                schedule,
                on_failure: step.on_failure,
                wait: step.wait,
            }));
        }
        let external = self
            .external
            .iter()
            .map(|t| {
                Topic::new(t).map_err(|source| FlowError::InvalidTopic {
                    step: "(external)".into(),
                    source,
                })
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        let flow = Flow {
            inner: Arc::new(FlowInner {
                steps,
                by_name,
                subscribers,
                routes,
                external,
            }),
        };
        let warnings = flow.compute_warnings();
        if self.deny_warnings && !warnings.is_empty() {
            return Err(FlowError::Warnings(warnings));
        }
        Ok(flow)
    }
}

fn steps_name(steps: &[Arc<StepRuntime>], index: usize) -> String {
    steps
        .get(index)
        .map(|s| s.name.to_string())
        .unwrap_or_default()
}

pub(crate) struct StepRuntime {
    pub(crate) name: StepName,
    pub(crate) trigger: Trigger,
    pub(crate) emits: BTreeSet<Topic>,
    pub(crate) config: StepConfig,
    pub(crate) limits: Arc<[Limit]>,
    pub(crate) handler: Handler,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) on_failure: Option<FailureHook>,
    pub(crate) wait: bool,
}

/// The steps with each step's companion after it; a windowed step whose
/// declaration is invalid is an error.
fn with_companions(declared: Vec<Step>) -> Result<Vec<Step>, FlowError> {
    let mut steps = Vec::with_capacity(declared.len());
    for mut step in declared {
        let Some(companion) = step.companion.take() else {
            steps.push(step);
            continue;
        };
        if let Some(source) = companion.error {
            return Err(FlowError::InvalidWindow {
                step: step.name,
                source,
            });
        }
        steps.push(step);
        steps.push(*companion.step);
    }
    Ok(steps)
}

/// Checks a step's limits: each valid, names unique, and each one on a step
/// it can apply to.
fn check_limits(step: &Step) -> Result<(), FlowError> {
    let refuse = |limit: &Limit, source| FlowError::InvalidLimit {
        step: step.name.clone(),
        limit: limit.name().to_string(),
        source,
    };
    for (i, limit) in step.limits.iter().enumerate() {
        limit.validate().map_err(|e| refuse(limit, e))?;
        if step.limits[..i].iter().any(|l| l.name() == limit.name()) {
            return Err(refuse(
                limit,
                LimitError::DuplicateName(limit.name().to_string()),
            ));
        }
        match &step.trigger {
            Trigger::Cron { .. } => return Err(refuse(limit, LimitError::CronStep)),
            Trigger::Api { .. } if limit.key.is_function() => {
                return Err(refuse(limit, LimitError::FunctionOnApiStep))
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) pattern: PathPattern,
    pub(crate) step: usize,
}

struct FlowInner {
    steps: Vec<Arc<StepRuntime>>,
    by_name: HashMap<StepName, usize>,
    subscribers: HashMap<Topic, Vec<usize>>,
    routes: Vec<Route>,
    external: BTreeSet<Topic>,
}

/// A validated set of steps: the flow graph. Cheap to clone.
#[derive(Clone)]
pub struct Flow {
    inner: Arc<FlowInner>,
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field(
                "steps",
                &self
                    .inner
                    .steps
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Flow {
    /// Starts a flow.
    pub fn builder() -> FlowBuilder {
        FlowBuilder::default()
    }

    /// Things in the graph that are probably mistakes.
    pub fn warnings(&self) -> Vec<FlowWarning> {
        self.compute_warnings()
    }

    /// The API steps' routes, in registration order: the step, its method and
    /// its path pattern (`/orders/{id}`).
    pub fn api_routes(&self) -> Vec<(&StepName, Method, &str)> {
        self.inner
            .steps
            .iter()
            .filter_map(|s| match &s.trigger {
                Trigger::Api { method, path } => Some((&s.name, *method, path.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The methods some API step answers at `path` (empty: no route there).
    pub fn methods_for(&self, path: &str) -> Vec<Method> {
        let mut methods: Vec<Method> = self
            .inner
            .routes
            .iter()
            .filter(|r| r.pattern.matches(path).is_some())
            .map(|r| r.method)
            .collect();
        methods.sort();
        methods.dedup();
        methods
    }

    /// The names of the registered steps, in registration order.
    pub fn step_names(&self) -> Vec<&StepName> {
        self.inner.steps.iter().map(|s| &s.name).collect()
    }

    fn compute_warnings(&self) -> Vec<FlowWarning> {
        let emitted: BTreeSet<&Topic> = self.inner.steps.iter().flat_map(|s| &s.emits).collect();
        let mut warnings = Vec::new();
        for step in &self.inner.steps {
            for topic in &step.emits {
                if !self.inner.subscribers.contains_key(topic) {
                    warnings.push(FlowWarning::EmittedButUnconsumed {
                        step: step.name.to_string(),
                        topic: topic.to_string(),
                    });
                }
            }
            if let Trigger::Events(topics) = &step.trigger {
                for t in topics {
                    let consumed = Topic::new(t).ok();
                    if let Some(topic) = consumed {
                        if !emitted.contains(&topic) && !self.inner.external.contains(&topic) {
                            warnings.push(FlowWarning::ConsumedButNeverEmitted {
                                step: step.name.to_string(),
                                topic: topic.to_string(),
                            });
                        }
                    }
                }
            }
        }
        warnings
    }

    pub(crate) fn steps(&self) -> &[Arc<StepRuntime>] {
        &self.inner.steps
    }

    pub(crate) fn step_index(&self, name: &str) -> Option<usize> {
        self.inner.by_name.get(name).copied()
    }

    pub(crate) fn route(
        &self,
        method: Method,
        path: &str,
    ) -> Option<(usize, BTreeMap<String, String>)> {
        self.inner
            .routes
            .iter()
            .filter(|r| r.method == method)
            .find_map(|r| r.pattern.matches(path).map(|params| (r.step, params)))
    }

    /// The declared topic a step may emit, if it declared it.
    pub(crate) fn declared_emit(&self, step: usize, topic: &str) -> Option<Topic> {
        self.inner.steps.get(step)?.emits.get(topic).cloned()
    }

    /// The flow's own `Topic` named `topic` (already validated) and the steps
    /// that subscribe to it, if any step does.
    pub(crate) fn subscribed(&self, topic: &str) -> Option<(&Topic, &[usize])> {
        self.inner
            .subscribers
            .get_key_value(topic)
            .map(|(known, subs)| (known, subs.as_slice()))
    }

    /// Whether the host declared `topic` external.
    pub(crate) fn is_external(&self, topic: &Topic) -> bool {
        self.inner.external.contains(topic)
    }

    /// The steps that subscribe to `topic`, by name.
    pub(crate) fn subscribers_of(&self, topic: &str) -> Vec<StepName> {
        Topic::new(topic)
            .ok()
            .and_then(|topic| self.inner.subscribers.get(&topic))
            .map(|subs| {
                subs.iter()
                    .map(|&i| self.inner.steps[i].name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One delivery per subscribing step of an event.
    pub(crate) fn fan_out(&self, event: Arc<Envelope>, out: &mut Vec<NewDelivery>) {
        let Some(subs) = self.inner.subscribers.get(&event.topic) else {
            tracing::debug!(topic = %event.topic, "event has no subscribers");
            return;
        };
        self.fan_out_to(event, subs, out);
    }

    /// One delivery for each of `subs`, the subscribers of the event's topic.
    pub(crate) fn fan_out_to(
        &self,
        event: Arc<Envelope>,
        subs: &[usize],
        out: &mut Vec<NewDelivery>,
    ) {
        out.reserve(subs.len());
        let due_at = event.due_at();
        let key = cancel_key(&event.headers);
        let delivery = |index: usize, event: Arc<Envelope>| {
            let step = &self.inner.steps[index];
            NewDelivery {
                step: step.name.clone(),
                group: if step.config.fifo {
                    event.group_key.clone()
                } else {
                    None
                },
                key: key.clone(),
                event,
                due_at,
            }
        };
        if let Some((&last, rest)) = subs.split_last() {
            for &index in rest {
                out.push(delivery(index, event.clone()));
            }
            out.push(delivery(last, event));
        }
    }

    fn edges(&self) -> Vec<(String, String, String)> {
        // (from, to, label); "from"/"to" are node ids.
        let mut edges = Vec::new();
        for topic in &self.inner.external {
            for &sub in self.inner.subscribers.get(topic).into_iter().flatten() {
                edges.push((
                    format!("ext_{}", node_id(topic.as_str())),
                    node_id(self.inner.steps[sub].name.as_str()),
                    topic.to_string(),
                ));
            }
        }
        for step in &self.inner.steps {
            for topic in &step.emits {
                let subs = self
                    .inner
                    .subscribers
                    .get(topic)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if subs.is_empty() {
                    edges.push((
                        node_id(step.name.as_str()),
                        format!("sink_{}", node_id(topic.as_str())),
                        topic.to_string(),
                    ));
                }
                for &sub in subs {
                    edges.push((
                        node_id(step.name.as_str()),
                        node_id(self.inner.steps[sub].name.as_str()),
                        topic.to_string(),
                    ));
                }
            }
        }
        edges
    }

    fn node_label(step: &StepRuntime) -> String {
        match &step.trigger {
            Trigger::Events(_) => format!("{}", step.name),
            Trigger::Cron {
                expression,
                time_zone,
                ..
            } => format!("{} (cron {expression} {time_zone})", step.name),
            Trigger::Api { method, path } => format!("{} ({method} {path})", step.name),
        }
    }

    /// The graph as a Mermaid flowchart: steps are nodes, topics label the edges.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for step in &self.inner.steps {
            let (open, close) = match step.trigger {
                Trigger::Events(_) => ("[", "]"),
                Trigger::Cron { .. } => ("([", "])"),
                Trigger::Api { .. } => ("[/", "/]"),
            };
            let _ = writeln!(
                out,
                "    {}{open}\"{}\"{close}",
                node_id(step.name.as_str()),
                Self::node_label(step)
            );
        }
        let mut extra = BTreeSet::new();
        for (from, to, label) in self.edges() {
            for node in [&from, &to] {
                if (node.starts_with("ext_") || node.starts_with("sink_"))
                    && extra.insert(node.clone())
                {
                    let _ = writeln!(out, "    {node}((\"{label}\"))");
                }
            }
            let _ = writeln!(out, "    {from} -- \"{label}\" --> {to}");
        }
        out
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph flow {\n    rankdir=LR;\n");
        for step in &self.inner.steps {
            let shape = match step.trigger {
                Trigger::Events(_) => "box",
                Trigger::Cron { .. } => "ellipse",
                Trigger::Api { .. } => "parallelogram",
            };
            let _ = writeln!(
                out,
                "    {} [label=\"{}\", shape={shape}];",
                node_id(step.name.as_str()),
                Self::node_label(step).replace('"', "\\\"")
            );
        }
        let mut extra = BTreeSet::new();
        for (from, to, label) in self.edges() {
            for node in [&from, &to] {
                if (node.starts_with("ext_") || node.starts_with("sink_"))
                    && extra.insert(node.clone())
                {
                    let _ = writeln!(out, "    {node} [label=\"{label}\", shape=plaintext];");
                }
            }
            let _ = writeln!(out, "    {from} -> {to} [label=\"{label}\"];");
        }
        out.push_str("}\n");
        out
    }

    /// The graph as JSON: `{"steps": [{name, kind, subscribes, emits, ...}], "external": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .inner
            .steps
            .iter()
            .map(|s| {
                let mut v = serde_json::json!({
                    "name": s.name.as_str(),
                    "emits": s.emits.iter().map(Topic::as_str).collect::<Vec<_>>(),
                });
                match &s.trigger {
                    Trigger::Events(topics) => {
                        v["kind"] = "event".into();
                        v["subscribes"] = topics.clone().into();
                    }
                    Trigger::Cron {
                        expression,
                        time_zone,
                        ..
                    } => {
                        v["kind"] = "cron".into();
                        v["schedule"] = expression.clone().into();
                        v["timeZone"] = time_zone.clone().into();
                        v["subscribes"] = vec![CronTick::TOPIC].into();
                    }
                    Trigger::Api { method, path } => {
                        v["kind"] = "api".into();
                        v["method"] = method.to_string().into();
                        v["path"] = path.clone().into();
                    }
                }
                v
            })
            .collect();
        serde_json::json!({
            "steps": steps,
            "external": self.inner.external.iter().map(Topic::as_str).collect::<Vec<_>>(),
        })
    }
}

fn node_id(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
