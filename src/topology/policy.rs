//! RabbitMQ policies: the broker-side equivalent of x-arguments, set with `rabbitmqctl`
//! (or the management API), never over AMQP.

use std::fmt;

use serde::Serialize;

/// A RabbitMQ policy: what `rabbitmqctl set_policy` takes.
///
/// Unlike x-arguments, a policy can be changed at any time and applies at once to
/// existing queues (no `406`, no re-declare, no lost messages); but it needs
/// `rabbitmqctl` or the management API, only one policy (the highest priority) applies
/// to a queue or exchange, and an x-argument of the same key wins over the policy.
///
/// # Example
/// ```
/// use fitviz_events::topology::{ConsumerQueue, DeadLettering};
///
/// let queue = ConsumerQueue::new("notifications")
///     .bind("workout.*")
///     .delivery_limit(5)
///     .dead_lettering(DeadLettering::Policy);
/// let policy = queue.policy().expect("policy mode");
/// assert_eq!(
///     policy.command_line("/"),
///     r#"rabbitmqctl set_policy -p / --priority 10 --apply-to queues notifications.dead-letter '^notifications$' '{"dead-letter-exchange":"notifications.dlx","dead-letter-strategy":"at-least-once","delivery-limit":5,"overflow":"reject-publish"}'"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// The regular expression of the names it applies to (anchored, dots escaped).
    pub pattern: String,
    /// `queues` or `exchanges`.
    pub apply_to: &'static str,
    /// The policy's definition (JSON object), e.g. `{"dead-letter-exchange": "q.dlx"}`.
    pub definition: serde_json::Value,
    /// Its priority: the highest of the matching policies is the one applied.
    pub priority: i32,
}

impl Policy {
    /// The arguments of `rabbitmqctl` that set this policy in virtual host `vhost`.
    pub fn set_args(&self, vhost: &str) -> Vec<String> {
        vec![
            "set_policy".into(),
            "-p".into(),
            vhost.into(),
            "--priority".into(),
            self.priority.to_string(),
            "--apply-to".into(),
            self.apply_to.into(),
            self.name.clone(),
            self.pattern.clone(),
            self.definition.to_string(),
        ]
    }

    /// The arguments of `rabbitmqctl` that remove this policy from `vhost`.
    pub fn clear_args(&self, vhost: &str) -> Vec<String> {
        vec![
            "clear_policy".into(),
            "-p".into(),
            vhost.into(),
            self.name.clone(),
        ]
    }

    /// The `rabbitmqctl set_policy …` command line, quoted for a POSIX shell.
    pub fn command_line(&self, vhost: &str) -> String {
        let mut line = String::from("rabbitmqctl");
        for arg in self.set_args(vhost) {
            line.push(' ');
            line.push_str(&shell_quote(&arg));
        }
        line
    }
}

impl fmt::Display for Policy {
    /// The command line for the default virtual host `/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.command_line("/"))
    }
}

/// A regular expression matching exactly `name`.
pub(crate) fn exact(name: &str) -> String {
    let mut pattern = String::from("^");
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('$');
    pattern
}

/// `arg` quoted for a POSIX shell when it needs it.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The policy making `<exchange>.unrouted` the broker-side alternate exchange of
/// `exchange`: every publisher's unroutable messages are kept, not only this crate's.
/// With it the broker never returns an event to the publisher, so a
/// [`Receipt`](crate::Receipt) says `routed` for an event kept by it.
pub fn alternate_exchange_policy(exchange: &str) -> Policy {
    let mut definition = serde_json::Map::new();
    definition.insert(
        "alternate-exchange".into(),
        crate::transport::unrouted_name(exchange).into(),
    );
    Policy {
        name: format!("{exchange}.alternate-exchange"),
        pattern: exact(exchange),
        apply_to: "exchanges",
        definition: definition.into(),
        priority: 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_one_name_only() {
        assert_eq!(exact("fitviz.events"), r"^fitviz\.events$");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("/"), "/");
    }
}
