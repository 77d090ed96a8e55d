//! What the one list of sinks (in `sinks/mod.rs`) expands to. A line there
//! gives a sink its module, its `sinks.<name>` config section (deserialized,
//! validated, documented by its type), its place in `/readyz` and metrics,
//! and its start and restart by the supervisor.

use std::any::Any;

use serde::Deserialize;

use super::supervisor::{Context, Started, start_instances};
use super::{Env, SinkConfig, SinksConfig};

/// Declares the sinks: for each `name: ConfigType` line, the module
/// `sinks::name` (its folder), the `sinks.name` field of [`SinksConfig`],
/// its validation, its name in metrics and `/readyz`, and its entry for the
/// supervisor. Used once, in `sinks/mod.rs`.
macro_rules! registry {
    ($($key:ident: $config:ident),* $(,)?) => {
        $( pub mod $key; )*

        /// `sinks:` where events go. Each section is documented on its type.
        #[derive(Clone, Debug, serde::Deserialize, PartialEq, Default)]
        #[serde(deny_unknown_fields, default)]
        pub struct SinksConfig {
            /// Prometheus exposition at `/metrics`.
            pub prometheus: $crate::sinks::registry::PrometheusConfig,
            $(
                #[doc = concat!("`sinks.", stringify!($key), "`")]
                pub $key: $key::$config,
            )*
        }

        /// Every sink's name, in registry order.
        pub const NAMES: &[&str] = &[$(<$key::$config as $crate::sinks::SinkConfig>::NAME),*];

        impl SinksConfig {
            /// Every problem of every sink's section.
            pub fn validate(&self, p: &mut $crate::problems::Scope<'_>) {
                use $crate::sinks::SinkConfig as _;
                $( self.$key.validate(&mut p.nested(stringify!($key))); )*
            }

            /// The names of the sinks the config switches on.
            pub fn enabled(&self) -> Vec<&'static str> {
                use $crate::sinks::SinkConfig as _;
                let mut on = Vec::new();
                $( if self.$key.enabled() { on.push(<$key::$config as $crate::sinks::SinkConfig>::NAME); } )*
                on
            }
        }

        /// One entry per sink, for the supervisor.
        pub(crate) fn plugins() -> Vec<Box<dyn $crate::sinks::registry::Plugin>> {
            vec![$( $crate::sinks::registry::plugin::<$key::$config>(|s| &s.$key) ),*]
        }
    };
}
pub(crate) use registry;

/// `sinks.prometheus:` the `/metrics` endpoint.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Serve `/metrics` on `http.listen`.
    pub enabled: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A sink kind, with its config type erased so that the supervisor can hold
/// them in one list.
pub(crate) trait Plugin: Send + Sync {
    /// The sink's name.
    fn name(&self) -> &'static str;
    /// Its section and the environment when it is switched on; compared
    /// across reloads to decide whether it restarts.
    fn wanted(&self, sinks: &SinksConfig, env: &Env) -> Option<Box<dyn Any + Send + Sync>>;
    /// Whether two of [`Plugin::wanted`]'s answers are the same settings.
    fn same(&self, a: &(dyn Any + Send + Sync), b: &(dyn Any + Send + Sync)) -> bool;
    /// Starts its sinks.
    fn start(
        &self,
        wanted: &(dyn Any + Send + Sync),
        ctx: &Context,
    ) -> anyhow::Result<Vec<Started>>;
}

struct Typed<C> {
    pick: fn(&SinksConfig) -> &C,
}

/// The entry of the sink whose section `pick` finds.
pub(crate) fn plugin<C: SinkConfig>(pick: fn(&SinksConfig) -> &C) -> Box<dyn Plugin> {
    Box::new(Typed { pick })
}

/// What decides a restart: the section, and the tags every sink writes.
type Wanted<C> = (C, std::collections::BTreeMap<String, String>);

impl<C: SinkConfig> Plugin for Typed<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn wanted(&self, sinks: &SinksConfig, env: &Env) -> Option<Box<dyn Any + Send + Sync>> {
        let c = (self.pick)(sinks);
        c.enabled()
            .then(|| Box::new((c.clone(), env.tags.clone())) as Box<dyn Any + Send + Sync>)
    }

    fn same(&self, a: &(dyn Any + Send + Sync), b: &(dyn Any + Send + Sync)) -> bool {
        a.downcast_ref::<Wanted<C>>() == b.downcast_ref::<Wanted<C>>()
    }

    fn start(
        &self,
        wanted: &(dyn Any + Send + Sync),
        ctx: &Context,
    ) -> anyhow::Result<Vec<Started>> {
        let (c, tags) = wanted
            .downcast_ref::<Wanted<C>>()
            .ok_or_else(|| anyhow::anyhow!("{}: settings of another sink", C::NAME))?;
        let env = Env {
            tags: tags.clone(),
            live: ctx.live.clone(),
            apps: ctx.apps.clone(),
        };
        start_instances(c, &env, ctx)
    }
}
