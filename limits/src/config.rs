//! The `[limits]` configuration section and per-project overrides.
//!
//! A [`Rule`] is a rate and a burst: a client may send `burst` requests at once, then one
//! more each `1/rate`. Rates are written `"600/min"`, `"10/s"` or `"30/h"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// How many requests per how long, e.g. `600/min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    pub count: u32,
    pub per: Per,
}

/// The period of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    pub const fn duration(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
            Per::Hour => Duration::from_secs(3600),
        }
    }
    const fn unit(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "min",
            Per::Hour => "h",
        }
    }
}

impl Rate {
    /// Time between two requests at this rate.
    pub fn interval(self) -> Duration {
        self.per.duration() / self.count.max(1)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("a rate looks like \"600/min\", \"10/s\" or \"30/h\", got {s:?}");
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("a rate must be at least 1 per period, got {s:?}"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Per::Second,
            "min" | "minute" => Per::Minute,
            "h" | "hour" => Per::Hour,
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.to_string()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.unit())
    }
}

/// A token bucket: `burst` requests at once, refilled at `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub rate: Rate,
    pub burst: u32,
}

impl Rule {
    /// `burst` at once, then `count` per `per`.
    pub const fn new(count: u32, per: Per, burst: u32) -> Self {
        Self {
            rate: Rate { count, per },
            burst,
        }
    }

    fn check(&self, name: &str) -> Result<(), String> {
        if self.burst == 0 {
            return Err(format!("limits.{name}.burst must be at least 1"));
        }
        if self.rate.interval() < Duration::from_micros(1) {
            return Err(format!("limits.{name}.rate is too high"));
        }
        Ok(())
    }
}

/// An address or network whose `Forwarded` / `X-Forwarded-For` headers are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyNet(pub IpNet);

impl TryFrom<String> for ProxyNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let t = s.trim();
        if let Ok(net) = t.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        t.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| {
                format!("a trusted proxy is an address or a network like 10.0.0.0/8, got {s:?}")
            })
    }
}

impl From<ProxyNet> for String {
    fn from(p: ProxyNet) -> String {
        p.0.to_string()
    }
}

/// `[limits]`: every rate limit of the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Off: nothing is limited (benchmarks, or a private deployment behind its own limiter).
    pub enabled: bool,
    /// Proxies (addresses or networks) in front of this process. Only when the TCP peer is one
    /// of them is the client address read from `Forwarded` or `X-Forwarded-For`.
    pub trusted_proxies: Vec<ProxyNet>,
    /// Keys tracked per bucket before the least used are forgotten (memory bound).
    pub max_keys: u64,
    /// Every API request (Client, Widget, Admin APIs, socket upgrades), per client IP.
    pub ip: Rule,
    /// Client API requests and socket sends, per secret key (or agent token).
    pub api_key: Rule,
    /// Client API and Widget API requests, per end user.
    pub end_user: Rule,
    /// Client API and Widget API requests and socket sends, per project.
    pub project: Rule,
    /// Admin login attempts, per client IP.
    pub login_ip: Rule,
    /// Admin login attempts, per account (the e-mail, trimmed and lower-cased).
    pub login_account: Rule,
    /// Widget sessions started (`POST /widget/v1/init`), per client IP.
    pub widget_init_ip: Rule,
    /// Widget sessions started, per project.
    pub widget_init_project: Rule,
    /// Messages sent by an end user (widget, socket or Client API), per sender.
    pub messages: Rule,
    /// Per-plan rules, by plan id (`[limits.plans.free]`): they replace the rules above for
    /// the projects on that plan, bucket by bucket (only the buckets that belong to one
    /// project: `api_key`, `end_user`, `project`, `widget_init_project`, `messages`). A
    /// project's own `settings.limits` come before its plan's. Defaults: the seed's plans.
    pub plans: BTreeMap<String, ProjectLimits>,
}

/// The seed plans' rules: Free and Starter get a quarter and a half of the configured
/// `api_key` / `project` budgets, Pro the configured ones, Enterprise five times them.
fn default_plan_limits() -> BTreeMap<String, ProjectLimits> {
    let plan = |api: (u32, u32), project: (u32, u32), init: (u32, u32)| ProjectLimits {
        api_key: Some(Rule::new(api.0, Per::Minute, api.1)),
        project: Some(Rule::new(project.0, Per::Minute, project.1)),
        widget_init_project: Some(Rule::new(init.0, Per::Minute, init.1)),
        ..ProjectLimits::default()
    };
    BTreeMap::from([
        ("free".into(), plan((750, 50), (3_000, 250), (750, 75))),
        (
            "starter".into(),
            plan((1_500, 100), (6_000, 500), (1_500, 150)),
        ),
        (
            "pro".into(),
            plan((3_000, 200), (12_000, 1_000), (3_000, 300)),
        ),
        (
            "enterprise".into(),
            plan((15_000, 1_000), (60_000, 5_000), (15_000, 1_500)),
        ),
    ])
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: Vec::new(),
            max_keys: 100_000,
            ip: Rule::new(6000, Per::Minute, 300),
            api_key: Rule::new(3000, Per::Minute, 200),
            end_user: Rule::new(600, Per::Minute, 60),
            project: Rule::new(12_000, Per::Minute, 1000),
            login_ip: Rule::new(20, Per::Minute, 10),
            login_account: Rule::new(30, Per::Hour, 10),
            widget_init_ip: Rule::new(20, Per::Minute, 20),
            widget_init_project: Rule::new(3000, Per::Minute, 300),
            messages: Rule::new(60, Per::Minute, 20),
            plans: default_plan_limits(),
        }
    }
}

impl LimitsConfig {
    /// Checks what types alone cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_keys < 100 {
            return Err("limits.max_keys must be at least 100".into());
        }
        for (name, rule) in self.rules() {
            rule.check(name)?;
        }
        for (plan, rules) in &self.plans {
            rules
                .check()
                .map_err(|e| format!("limits.plans.{plan}.{}", e.trim_start_matches("limits.")))?;
        }
        Ok(())
    }

    /// The rules of projects on `plan` (none if the plan has no entry).
    pub fn plan(&self, plan: &str) -> Option<&ProjectLimits> {
        self.plans.get(plan)
    }

    /// Each rule with its key name.
    pub fn rules(&self) -> [(&'static str, &Rule); 9] {
        [
            ("ip", &self.ip),
            ("api_key", &self.api_key),
            ("end_user", &self.end_user),
            ("project", &self.project),
            ("login_ip", &self.login_ip),
            ("login_account", &self.login_account),
            ("widget_init_ip", &self.widget_init_ip),
            ("widget_init_project", &self.widget_init_project),
            ("messages", &self.messages),
        ]
    }
}

/// A project's own limits, overriding the configured ones: `settings.limits` of the project,
/// e.g. `{"project": {"rate": "60000/min", "burst": 5000}, "api_key": {...}}`. Only the
/// buckets that belong to one project can be overridden.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user: Option<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub widget_init_project: Option<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Rule>,
}

impl ProjectLimits {
    /// The overrides in a project's settings object. `Ok(default)` when there are none; an
    /// error naming the problem when `settings.limits` is malformed (the Admin API refuses to
    /// store it).
    pub fn from_settings(settings: &serde_json::Value) -> Result<Self, String> {
        let Some(v) = settings.get("limits") else {
            return Ok(Self::default());
        };
        // serde's derives accept a sequence for a struct; a settings section is an object.
        if !v.is_object() {
            return Err("settings.limits must be an object".into());
        }
        let parsed: Self =
            serde_json::from_value(v.clone()).map_err(|e| format!("settings.limits: {e}"))?;
        parsed.check().map_err(|e| format!("settings.{e}"))?;
        Ok(parsed)
    }

    /// Checks each rule; the error names it (`limits.project.burst …`).
    fn check(&self) -> Result<(), String> {
        for (name, rule) in [
            ("api_key", self.api_key),
            ("end_user", self.end_user),
            ("project", self.project),
            ("widget_init_project", self.widget_init_project),
            ("messages", self.messages),
        ] {
            if let Some(r) = rule {
                r.check(name)?;
            }
        }
        Ok(())
    }

    /// These rules, with `fallback`'s for the buckets these leave unset (a project's own
    /// overrides over its plan's).
    pub fn or(&self, fallback: Option<&ProjectLimits>) -> ProjectLimits {
        let Some(f) = fallback else {
            return self.clone();
        };
        ProjectLimits {
            api_key: self.api_key.or(f.api_key),
            end_user: self.end_user.or(f.end_user),
            project: self.project.or(f.project),
            widget_init_project: self.widget_init_project.or(f.widget_init_project),
            messages: self.messages.or(f.messages),
        }
    }

    /// Like [`Self::from_settings`], but a malformed section counts as none (it was checked
    /// when stored; this is the gateway reading it).
    pub fn of(settings: &serde_json::Value) -> Self {
        Self::from_settings(settings).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring malformed per-project limits");
            Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!(r.count, 600);
        assert_eq!(r.interval(), Duration::from_millis(100));
        assert_eq!(r.to_string(), "600/min");
        assert_eq!("10/s".parse::<Rate>().unwrap().per, Per::Second);
        assert_eq!(" 30 / h ".parse::<Rate>().unwrap().to_string(), "30/h");
        for bad in ["0/min", "600", "ten/min", "5/day", "-1/s", ""] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip_as_toml_values() {
        let c = LimitsConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["ip"]["rate"], "6000/min");
        let back: LimitsConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn plan_rules_fill_what_a_project_leaves_unset() {
        let c = LimitsConfig::default();
        let free = c.plan("free").unwrap();
        assert_eq!(free.project, Some(Rule::new(3_000, Per::Minute, 250)));
        assert_eq!(c.plan("pro").unwrap().project, Some(c.project));
        assert!(c.plan("custom").is_none());
        let own = ProjectLimits {
            project: Some(Rule::new(10, Per::Second, 5)),
            ..ProjectLimits::default()
        };
        let merged = own.or(Some(free));
        assert_eq!(merged.project, own.project, "the project's own rule first");
        assert_eq!(merged.api_key, free.api_key, "then its plan's");
        assert_eq!(merged.messages, None, "then the configured one");
        let mut bad = LimitsConfig::default();
        bad.plans.insert(
            "free".into(),
            ProjectLimits {
                api_key: Some(Rule::new(1, Per::Second, 0)),
                ..ProjectLimits::default()
            },
        );
        assert_eq!(
            bad.validate().unwrap_err(),
            "limits.plans.free.api_key.burst must be at least 1"
        );
    }

    #[test]
    fn proxies_are_addresses_or_networks() {
        let p: ProxyNet = "10.1.2.3".to_owned().try_into().unwrap();
        assert_eq!(String::from(p), "10.1.2.3/32");
        let n: ProxyNet = "10.1.2.3/8".to_owned().try_into().unwrap();
        assert_eq!(String::from(n), "10.0.0.0/8");
        assert!(ProxyNet::try_from("proxy.local".to_owned()).is_err());
    }

    #[test]
    fn project_overrides_are_checked() {
        let s = serde_json::json!({"limits": {"project": {"rate": "100/s", "burst": 50}}});
        let p = ProjectLimits::from_settings(&s).unwrap();
        assert_eq!(p.project, Some(Rule::new(100, Per::Second, 50)));
        assert_eq!(p.api_key, None);
        assert_eq!(
            ProjectLimits::from_settings(&serde_json::json!({})).unwrap(),
            ProjectLimits::default()
        );
        for bad in [
            serde_json::json!({"limits": {"ip": {"rate": "1/s", "burst": 1}}}),
            serde_json::json!({"limits": {"project": {"rate": "fast", "burst": 1}}}),
            serde_json::json!({"limits": {"project": {"rate": "1/s", "burst": 0}}}),
            serde_json::json!({"limits": []}),
        ] {
            assert!(ProjectLimits::from_settings(&bad).is_err(), "{bad}");
            assert_eq!(ProjectLimits::of(&bad), ProjectLimits::default());
        }
    }
}
