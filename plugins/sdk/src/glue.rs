//! The bridge between the [API](crate::api) and the generated bindings: the
//! host's handles implement the API's traits, and each world's entry point
//! converts the API's answer into the interface's types.
//! [`export_policy!`](crate::export_policy) wires a policy type to them.

/// Implements [`crate::api::Request`] for a world's `context.request` handle.
#[cfg(any(feature = "authorizer", feature = "planner"))]
macro_rules! host_request {
    ($handle:ty) => {
        impl crate::api::Request for $handle {
            fn request_id(&self) -> String {
                <$handle>::request_id(self)
            }
            fn seed(&self) -> u64 {
                <$handle>::seed(self)
            }
            fn endpoint(&self) -> String {
                <$handle>::endpoint(self)
            }
            fn model(&self) -> String {
                <$handle>::model(self)
            }
            fn stream(&self) -> bool {
                <$handle>::stream(self)
            }
            fn client_ip(&self) -> String {
                <$handle>::client_ip(self)
            }
            fn header(&self, name: &str) -> Option<String> {
                <$handle>::header(self, name)
            }
            fn headers(&self) -> Vec<crate::api::Label> {
                <$handle>::headers(self)
                    .into_iter()
                    .map(|l| crate::api::Label::new(l.name, l.value))
                    .collect()
            }
            fn protocol(&self) -> String {
                <$handle>::protocol(self)
            }
        }
    };
}

/// The interface's denial for the API's.
#[cfg(any(feature = "authorizer", feature = "planner"))]
macro_rules! wit_denial {
    ($types:path, $denial:expr) => {{
        use $types as types;
        let d: crate::api::Denial = $denial;
        types::Denial {
            status: d.status,
            code: d.code,
            message: d.message,
            retry_after_s: d.retry_after_s,
        }
    }};
}

/// The entry point of `authorizer-policy`.
#[cfg(feature = "authorizer")]
pub mod authorizer {
    use crate::api::{Authorizer, CounterState, Key, KeyStatus, Standing, Verdict};
    use crate::authorizer::exports::sluice::policy::authorizer::Verdict as WitVerdict;
    use crate::authorizer::sluice::policy::context as ctx;
    use crate::authorizer::sluice::policy::types;

    host_request!(ctx::Request);

    /// The key handle with the request its standing is asked for.
    struct HostKey<'a> {
        key: &'a ctx::Key,
        req: &'a ctx::Request,
    }

    impl Key for HostKey<'_> {
        fn id(&self) -> String {
            self.key.id()
        }
        fn name(&self) -> String {
            self.key.name()
        }
        fn owner(&self) -> String {
            self.key.owner()
        }
        fn prefix(&self) -> String {
            self.key.prefix()
        }
        fn standing(&self) -> Standing {
            let s = self.key.standing(self.req);
            Standing {
                status: match s.status {
                    types::KeyStatus::Active => KeyStatus::Active,
                    types::KeyStatus::Disabled => KeyStatus::Disabled,
                    types::KeyStatus::Revoked => KeyStatus::Revoked,
                },
                expires_at_ms: s.expires_at_ms,
                expired: s.expired,
                model_allowed: s.model_allowed,
                client_allowed: s.client_allowed,
                quota_remaining: s.quota_remaining,
                rpm_limit: s.rpm_limit,
                tpm_limit: s.tpm_limit,
            }
        }
        fn models(&self) -> Vec<String> {
            self.key.models()
        }
        fn networks(&self) -> Vec<String> {
            self.key.networks()
        }
        fn counter_add(&self, name: &str, delta: i64, window_ms: u32) -> CounterState {
            let state = self.key.counter_add(name, delta, window_ms);
            CounterState {
                total: state.total,
                resets_in_ms: state.resets_in_ms,
            }
        }
    }

    /// Calls `P::authorize` with the host's handles.
    pub fn authorize<P: Authorizer>(req: &ctx::Request, key: Option<&ctx::Key>) -> WitVerdict {
        let key = key.map(|key| HostKey { key, req });
        match P::authorize(req, key.as_ref().map(|k| k as &dyn Key)) {
            Verdict::Allow(labels) => WitVerdict::Allow(
                labels
                    .into_iter()
                    .map(|l| types::Label {
                        name: l.name,
                        value: l.value,
                    })
                    .collect(),
            ),
            Verdict::Deny(denial) => WitVerdict::Deny(wit_denial!(types, denial)),
        }
    }
}

/// The entry point of `planner-policy`.
#[cfg(feature = "planner")]
pub mod planner {
    use crate::api::{Candidate, Facts, Planner};
    use crate::planner::exports::sluice::policy::planner as wit;
    use crate::planner::sluice::policy::context as ctx;
    use crate::planner::sluice::policy::types;

    host_request!(ctx::Request);

    /// Calls `P::plan` over candidates whose facts are read from the host.
    ///
    /// # Errors
    /// The policy's refusal.
    pub fn plan<P: Planner>(
        req: &ctx::Request,
        offered: Vec<wit::Candidate>,
    ) -> Result<Vec<wit::Step>, types::Denial> {
        let candidates: Vec<Candidate> = offered
            .into_iter()
            .zip(0..)
            .map(|(c, position)| Candidate {
                position,
                id: c.id,
                priority: c.priority,
                weight: c.weight,
                healthy: c.healthy,
                in_flight: c.in_flight,
                max_in_flight: c.max_in_flight,
                latency_ewma_ms: c.latency_ewma_ms,
                error_permille: c.error_permille,
                facts: Facts::Host,
            })
            .collect();
        match P::plan(req, &candidates) {
            Ok(steps) => Ok(steps
                .into_iter()
                .map(|s| wit::Step {
                    candidate: s.candidate,
                    model: s.model,
                })
                .collect()),
            Err(denial) => Err(wit_denial!(types, denial)),
        }
    }
}

/// The entry point of `editor-policy`.
#[cfg(feature = "editor")]
pub mod editor {
    use crate::api::{Editor, Label, Usage};
    use crate::editor::sluice::policy::context as ctx;
    use crate::editor::sluice::policy::types;

    impl Usage for ctx::Usage {
        fn request_id(&self) -> String {
            ctx::Usage::request_id(self)
        }
        fn key_id(&self) -> String {
            ctx::Usage::key_id(self)
        }
        fn key_prefix(&self) -> String {
            ctx::Usage::key_prefix(self)
        }
        fn endpoint(&self) -> String {
            ctx::Usage::endpoint(self)
        }
        fn model(&self) -> String {
            ctx::Usage::model(self)
        }
        fn upstream_model(&self) -> String {
            ctx::Usage::upstream_model(self)
        }
        fn channel_id(&self) -> String {
            ctx::Usage::channel_id(self)
        }
        fn status(&self) -> u16 {
            ctx::Usage::status(self)
        }
        fn error_kind(&self) -> Option<String> {
            ctx::Usage::error_kind(self)
        }
        fn prompt_tokens(&self) -> u32 {
            ctx::Usage::prompt_tokens(self)
        }
        fn completion_tokens(&self) -> u32 {
            ctx::Usage::completion_tokens(self)
        }
        fn cost(&self) -> i64 {
            ctx::Usage::cost(self)
        }
        fn client_ip(&self) -> String {
            ctx::Usage::client_ip(self)
        }
        fn labels(&self) -> Vec<Label> {
            ctx::Usage::labels(self)
                .into_iter()
                .map(|l| Label::new(l.name, l.value))
                .collect()
        }
        fn mentions(&self, needles: &[&str]) -> bool {
            let needles: Vec<String> = needles.iter().map(|n| (*n).to_string()).collect();
            ctx::Usage::mentions(self, &needles)
        }
        fn prompt(&self) -> Option<String> {
            ctx::Usage::prompt(self)
        }
        fn completion(&self) -> Option<String> {
            ctx::Usage::completion(self)
        }
        fn set_key_prefix(&self, value: &str) {
            ctx::Usage::set_key_prefix(self, value);
        }
        fn set_error_kind(&self, value: Option<&str>) {
            ctx::Usage::set_error_kind(self, value);
        }
        fn set_client_ip(&self, value: &str) {
            ctx::Usage::set_client_ip(self, value);
        }
        fn set_labels(&self, labels: &[Label]) {
            let labels: Vec<types::Label> = labels
                .iter()
                .map(|l| types::Label {
                    name: l.name.clone(),
                    value: l.value.clone(),
                })
                .collect();
            ctx::Usage::set_labels(self, &labels);
        }
        fn set_prompt(&self, value: Option<&str>) {
            ctx::Usage::set_prompt(self, value);
        }
        fn set_completion(&self, value: Option<&str>) {
            ctx::Usage::set_completion(self, value);
        }
    }

    /// Calls `P::edit` with the host's usage handle.
    pub fn edit<P: Editor>(rec: &ctx::Usage) -> bool {
        P::edit(rec)
    }
}

/// Exports a policy written against the [API](crate::api) as the component's
/// world: `export_policy!(authorizer: MyAuth)`, `export_policy!(planner:
/// MyRouter)` or `export_policy!(editor: MyEditor)`, with the SDK feature of
/// the same name enabled.
#[macro_export]
macro_rules! export_policy {
    (authorizer: $policy:ty) => {
        const _: () = {
            struct Exported;
            impl $crate::authorizer::exports::sluice::policy::lifecycle::Guest for Exported {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    <$policy as $crate::api::Authorizer>::init(&config)
                }
            }
            impl $crate::authorizer::exports::sluice::policy::authorizer::Guest for Exported {
                fn authorize(
                    req: &$crate::authorizer::sluice::policy::context::Request,
                    key: ::std::option::Option<&$crate::authorizer::sluice::policy::context::Key>,
                ) -> $crate::authorizer::exports::sluice::policy::authorizer::Verdict {
                    $crate::glue::authorizer::authorize::<$policy>(req, key)
                }
            }
            $crate::authorizer::export_authorizer!(Exported);
        };
    };
    (planner: $policy:ty) => {
        const _: () = {
            struct Exported;
            impl $crate::planner::exports::sluice::policy::lifecycle::Guest for Exported {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    <$policy as $crate::api::Planner>::init(&config)
                }
            }
            impl $crate::planner::exports::sluice::policy::planner::Guest for Exported {
                fn plan(
                    req: &$crate::planner::sluice::policy::context::Request,
                    candidates: ::std::vec::Vec<
                        $crate::planner::exports::sluice::policy::planner::Candidate,
                    >,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::planner::exports::sluice::policy::planner::Step>,
                    $crate::planner::sluice::policy::types::Denial,
                > {
                    $crate::glue::planner::plan::<$policy>(req, candidates)
                }
            }
            $crate::planner::export_planner!(Exported);
        };
    };
    (editor: $policy:ty) => {
        const _: () = {
            struct Exported;
            impl $crate::editor::exports::sluice::policy::lifecycle::Guest for Exported {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    <$policy as $crate::api::Editor>::init(&config)
                }
            }
            impl $crate::editor::exports::sluice::policy::editor::Guest for Exported {
                fn edit(rec: &$crate::editor::sluice::policy::context::Usage) -> bool {
                    $crate::glue::editor::edit::<$policy>(rec)
                }
            }
            $crate::editor::export_editor!(Exported);
        };
    };
}
