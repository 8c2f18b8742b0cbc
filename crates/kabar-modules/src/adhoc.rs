//! XEP-0050: Ad-Hoc Commands, a minimal framework other modules register commands with.
//!
//! * A module that offers commands gets the shared [`AdhocCommands`] registry (built in
//!   [`crate::default_modules`]) and calls [`AdhocCommands::register`] with an
//!   [`AdhocCommand`]; [`AdhocModule`] answers every `<command/>` IQ addressed to the server.
//! * Only local accounts may run commands (others get `<forbidden/>`); a command may refuse
//!   further.
//! * Execution (§3.4): `action='execute'` (or none) starts or continues a command; a command that
//!   needs input answers [`CommandReply::Form`] (status `executing`, a XEP-0004 form, actions
//!   `complete`); the client submits the form with `action='complete'` or `execute` and the command
//!   answers [`CommandReply::Completed`]. `action='cancel'` ends it (status `canceled`). Sessions are
//!   stateless: the submitted form carries everything, so a `sessionid` is generated and echoed
//!   but nothing is kept between stages.
//! * Unknown nodes get `<item-not-found/>`; bad input a command reports gets `<bad-request/>` with
//!   the XEP-0050 `<bad-payload/>` condition.
//!
//! Discovery: the server advertises `http://jabber.org/protocol/commands`. Listing commands with
//! disco#items on that node is answered by the disco module's node rules (item-not-found today);
//! clients execute the nodes documented in docs/MONITOR.md directly.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use kabar_core::module::IqResult;
use kabar_core::{IqRequest, Jid, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};

use crate::disco::NS_DISCO_ITEMS;

pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
pub const NS_DATA: &str = "jabber:x:data";
/// Most commands one server registers (a bound for a registry filled by code, not input).
const MAX_COMMANDS: usize = 64;

/// What a command is asked to do.
pub struct CommandRequest<'a> {
    pub from: &'a Jid,
    pub node: &'a str,
    /// `execute`, `next`, `complete` (`prev` is treated like `execute`).
    pub action: &'a str,
    /// The submitted XEP-0004 form (`<x type='submit'/>`), if any.
    pub form: Option<&'a Element>,
}

impl CommandRequest<'_> {
    /// The first value of field `var` in the submitted form.
    pub fn field(&self, var: &str) -> Option<String> {
        field_value(self.form?, var)
    }
}

pub enum CommandReply {
    /// Needs input: status `executing` with this form (`<x xmlns='jabber:x:data' type='form'/>`).
    Form(Element),
    /// Done: status `completed` with an info note (and optionally a result form).
    Completed { note: String, result: Option<Element> },
}

#[async_trait]
pub trait AdhocCommand: Send + Sync + 'static {
    fn node(&self) -> &'static str;
    /// Human-readable name (disco#items `name`).
    fn name(&self) -> &'static str;
    async fn execute(&self, server: &Server, request: &CommandRequest<'_>) -> Result<CommandReply, StanzaError>;
}

/// The registry modules add their commands to.
#[derive(Default)]
pub struct AdhocCommands {
    commands: RwLock<Vec<Arc<dyn AdhocCommand>>>,
}

impl AdhocCommands {
    pub fn new() -> AdhocCommands {
        AdhocCommands::default()
    }

    /// Adds a command; a second command with the same node, or more than 64, is ignored (false).
    pub fn register(&self, command: Arc<dyn AdhocCommand>) -> bool {
        let mut list = self.commands.write().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_COMMANDS || list.iter().any(|c| c.node() == command.node()) {
            return false;
        }
        list.push(command);
        true
    }

    pub fn get(&self, node: &str) -> Option<Arc<dyn AdhocCommand>> {
        self.commands.read().unwrap_or_else(|p| p.into_inner()).iter().find(|c| c.node() == node).cloned()
    }

    /// (node, name) of every command, in registration order.
    pub fn list(&self) -> Vec<(&'static str, &'static str)> {
        self.commands.read().unwrap_or_else(|p| p.into_inner()).iter().map(|c| (c.node(), c.name())).collect()
    }
}

pub struct AdhocModule {
    commands: Arc<AdhocCommands>,
}

impl AdhocModule {
    pub fn new(commands: Arc<AdhocCommands>) -> AdhocModule {
        AdhocModule { commands }
    }
}

fn new_session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// XEP-0050 §4.6 `<bad-payload/>` on top of `<bad-request/>`.
pub fn bad_payload(text: impl Into<String>) -> StanzaError {
    StanzaError::bad_request().with_text(text).with_app(elem("bad-payload", NS_COMMANDS))
}

#[async_trait]
impl Module for AdhocModule {
    fn name(&self) -> &'static str {
        "adhoc"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_COMMANDS]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("command", NS_COMMANDS)]
    }

    /// XEP-0050 §2.2: the commands, listed at the commands node of the server.
    fn server_disco_items(&self, server: &Server, node: &str) -> Option<Vec<Element>> {
        (node == NS_COMMANDS).then(|| {
            self.commands
                .list()
                .into_iter()
                .map(|(node, name)| {
                    elem("item", NS_DISCO_ITEMS).with_attr("jid", server.domain.as_str()).with_attr("node", node).with_attr("name", name)
                })
                .collect()
        })
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        if iq.to_account.is_some() {
            // Commands are offered by the server, not on accounts' behalf.
            return Err(StanzaError::service_unavailable());
        }
        if !iq.is_set {
            return Err(StanzaError::bad_request());
        }
        let Some(cmd) = iq.payload() else { return Err(StanzaError::bad_request()) };
        let node = cmd.attr("node").unwrap_or("");
        let Some(command) = self.commands.get(node) else {
            return Err(StanzaError::item_not_found());
        };
        if !server.is_local(&iq.from) || iq.from.node().is_none() {
            return Err(StanzaError::forbidden());
        }
        let action = cmd.attr("action").unwrap_or("execute");
        let session = cmd
            .attr("sessionid")
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .map(str::to_owned)
            .unwrap_or_else(new_session_id);
        let reply = |status: &str| {
            elem("command", NS_COMMANDS)
                .with_attr("node", node)
                .with_attr("sessionid", session.clone())
                .with_attr("status", status)
        };
        match action {
            "cancel" => return Ok(Some(reply("canceled"))),
            "execute" | "next" | "complete" | "prev" => {}
            // §4.4: an action the command does not offer.
            _ => return Err(StanzaError::bad_request().with_app(elem("malformed-action", NS_COMMANDS))),
        }
        let form = cmd.get_child("x", NS_DATA).filter(|x| x.attr("type") == Some("submit"));
        let request = CommandRequest { from: &iq.from, node, action, form };
        Ok(Some(match command.execute(server, &request).await? {
            CommandReply::Form(form) => reply("executing")
                .with_child(
                    elem("actions", NS_COMMANDS)
                        .with_attr("execute", "complete")
                        .with_child(elem("complete", NS_COMMANDS)),
                )
                .with_child(form),
            CommandReply::Completed { note, result } => {
                let mut el = reply("completed");
                if let Some(result) = result {
                    el.append_child(result);
                }
                el.with_child(elem("note", NS_COMMANDS).with_attr("type", "info").with_text(note))
            }
        }))
    }
}

// --- XEP-0004 helpers --------------------------------------------------------------------------

/// `<x xmlns='jabber:x:data' type='form'>` with a title and instructions.
pub fn form(title: &str, instructions: &str) -> Element {
    elem("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(elem("title", NS_DATA).with_text(title))
        .with_child(elem("instructions", NS_DATA).with_text(instructions))
}

/// A `list-single` field with (label, value) options.
pub fn list_single(var: &str, label: &str, required: bool, options: &[(String, String)]) -> Element {
    let mut f = elem("field", NS_DATA).with_attr("var", var).with_attr("type", "list-single").with_attr("label", label);
    if required {
        f.append_child(elem("required", NS_DATA));
    }
    if let Some((_, first)) = options.first() {
        f.append_child(elem("value", NS_DATA).with_text(first.clone()));
    }
    for (label, value) in options {
        f.append_child(
            elem("option", NS_DATA)
                .with_attr("label", label.clone())
                .with_child(elem("value", NS_DATA).with_text(value.clone())),
        );
    }
    f
}

/// A free-text field (`text-single` or `text-multi`).
pub fn text_field(var: &str, label: &str, kind: &str) -> Element {
    elem("field", NS_DATA).with_attr("var", var).with_attr("type", kind).with_attr("label", label)
}

/// The values of field `var` joined by newlines (text-multi), or the single value.
pub fn field_value(form: &Element, var: &str) -> Option<String> {
    let field = form.children().find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))?;
    let values: Vec<String> = field.children().filter(|v| v.is("value", NS_DATA)).map(|v| v.text()).collect();
    if values.is_empty() {
        None
    } else {
        Some(values.join("\n"))
    }
}
