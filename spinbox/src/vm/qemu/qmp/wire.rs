//! The QMP wire format, decoded by a pure function from one line to a typed message.
//!
//! Messages (one JSON object per line):
//! - greeting: `{"QMP": {"version": …, "capabilities": […]}}`
//! - success: `{"return": <any>, "id": <any>}`
//! - failure: `{"error": {"class": "…", "desc": "…"}, "id": <any>}`
//! - event: `{"event": "NAME", "data": {…}, "timestamp": {"seconds": …, "microseconds": …}}`
//!
//! Unknown fields are ignored; a line that is none of these is a [`DecodeError`].

use serde_json::{Map, Value};

/// Why a line is not a QMP message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The line is not valid JSON.
    #[error("QMP line is not JSON")]
    Json(#[source] serde_json::Error),
    /// The JSON is not an object.
    #[error("QMP line is JSON but not an object")]
    NotAnObject,
    /// The object has none of `QMP`, `return`, `error`, `event`.
    #[error("QMP object has no `QMP`, `return`, `error` or `event` member")]
    UnknownShape,
    /// A member has the wrong type (e.g. `event` not a string).
    #[error("QMP member `{0}` has the wrong type")]
    BadMember(&'static str),
}

/// One decoded QMP message.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    /// The server's greeting (its `QMP` member).
    Greeting(Value),
    /// A successful reply.
    Return {
        /// The command's id, if it had one.
        id: Option<Value>,
        /// The `return` value.
        value: Value,
    },
    /// A failed command.
    Error {
        /// The command's id, if it had one.
        id: Option<Value>,
        /// The error class (e.g. `GenericError`, `CommandNotFound`).
        class: String,
        /// The human-readable description.
        desc: String,
    },
    /// An asynchronous event.
    Event(QmpEvent),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// What happened.
    pub kind: QmpEventKind,
    /// The server's timestamp in microseconds since the epoch, when present.
    pub timestamp_us: Option<u64>,
}

/// The events this crate acts on, and everything else by name.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpEventKind {
    /// `SHUTDOWN`: QEMU is shutting down (or would, without `-no-shutdown`).
    Shutdown {
        /// True if the guest asked for it (poweroff, reset with `-no-reboot`).
        guest: bool,
        /// QEMU's reason, e.g. `host-qmp-quit`, `guest-shutdown`, `host-signal`.
        reason: String,
    },
    /// `POWERDOWN`: an ACPI power-button press was delivered.
    Powerdown,
    /// `STOP`: the VM paused.
    Stop,
    /// `RESUME`: the VM resumed.
    Resume,
    /// `RESET`: the VM reset.
    Reset {
        /// True if the guest asked for it.
        guest: bool,
        /// QEMU's reason.
        reason: String,
    },
    /// `GUEST_PANICKED`: the guest reported a panic (pvpanic / Hyper-V crash MSRs).
    GuestPanicked {
        /// The action QEMU took (`pause`, `poweroff`, `run`).
        action: String,
    },
    /// Any other event, with its data (or `null`).
    Other {
        /// The event name.
        name: String,
        /// The `data` member.
        data: Value,
    },
}

/// Decodes one line (without its newline) into a message. Never panics.
pub fn decode_line(line: &[u8]) -> Result<QmpMessage, DecodeError> {
    let value: Value = serde_json::from_slice(line).map_err(DecodeError::Json)?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotAnObject);
    };
    if let Some(event) = obj.remove("event") {
        let Value::String(name) = event else {
            return Err(DecodeError::BadMember("event"));
        };
        let data = obj.remove("data").unwrap_or(Value::Null);
        let timestamp_us = obj.get("timestamp").and_then(timestamp_us);
        return Ok(QmpMessage::Event(QmpEvent {
            kind: event_kind(name, data),
            timestamp_us,
        }));
    }
    let id = obj.remove("id");
    if let Some(value) = obj.remove("return") {
        return Ok(QmpMessage::Return { id, value });
    }
    if let Some(err) = obj.remove("error") {
        let Value::Object(err) = err else {
            return Err(DecodeError::BadMember("error"));
        };
        let class = str_member(&err, "class")
            .unwrap_or("GenericError")
            .to_owned();
        let desc = str_member(&err, "desc").unwrap_or_default().to_owned();
        return Ok(QmpMessage::Error { id, class, desc });
    }
    if let Some(greeting) = obj.remove("QMP") {
        return Ok(QmpMessage::Greeting(greeting));
    }
    Err(DecodeError::UnknownShape)
}

fn str_member<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

fn timestamp_us(ts: &Value) -> Option<u64> {
    let s = ts.get("seconds")?.as_u64()?;
    let us = ts.get("microseconds")?.as_u64()?;
    s.checked_mul(1_000_000)?.checked_add(us)
}

fn event_kind(name: String, data: Value) -> QmpEventKind {
    let empty = Map::new();
    let fields = data.as_object().unwrap_or(&empty);
    let guest = fields
        .get("guest")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let reason = str_member(fields, "reason").unwrap_or_default().to_owned();
    match name.as_str() {
        "SHUTDOWN" => QmpEventKind::Shutdown { guest, reason },
        "POWERDOWN" => QmpEventKind::Powerdown,
        "STOP" => QmpEventKind::Stop,
        "RESUME" => QmpEventKind::Resume,
        "RESET" => QmpEventKind::Reset { guest, reason },
        "GUEST_PANICKED" => QmpEventKind::GuestPanicked {
            action: str_member(fields, "action").unwrap_or_default().to_owned(),
        },
        _ => QmpEventKind::Other { name, data },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn decodes_each_shape() {
        let g = decode_line(
            br#"{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}}"#,
        )
        .unwrap();
        assert!(matches!(g, QmpMessage::Greeting(_)));
        assert_eq!(
            decode_line(br#"{"return": {}, "id": 3, "extra": true}"#).unwrap(),
            QmpMessage::Return {
                id: Some(json!(3)),
                value: json!({})
            }
        );
        assert_eq!(
            decode_line(br#"{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": 4}"#)
                .unwrap(),
            QmpMessage::Error {
                id: Some(json!(4)),
                class: "CommandNotFound".into(),
                desc: "nope".into()
            }
        );
        let e = decode_line(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#).unwrap();
        assert_eq!(
            e,
            QmpMessage::Event(QmpEvent {
                kind: QmpEventKind::Shutdown {
                    guest: false,
                    reason: "host-qmp-quit".into()
                },
                timestamp_us: Some(1_000_002),
            })
        );
        for (name, kind) in [
            ("STOP", QmpEventKind::Stop),
            ("RESUME", QmpEventKind::Resume),
            ("POWERDOWN", QmpEventKind::Powerdown),
        ] {
            let line = format!(r#"{{"event": "{name}"}}"#);
            let QmpMessage::Event(ev) = decode_line(line.as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(ev.kind, kind);
        }
        let QmpMessage::Event(ev) =
            decode_line(br#"{"event": "GUEST_PANICKED", "data": {"action": "pause"}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            ev.kind,
            QmpEventKind::GuestPanicked {
                action: "pause".into()
            }
        );
        let QmpMessage::Event(ev) =
            decode_line(br#"{"event": "BLOCK_IO_ERROR", "data": 5}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            ev.kind,
            QmpEventKind::Other {
                name: "BLOCK_IO_ERROR".into(),
                data: json!(5)
            }
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            &b""[..],
            b"{",
            b"{\"return\": ",
            b"not json",
            b"[1,2]",
            b"42",
            b"null",
            b"{\"foo\": 1}",
            b"{\"event\": 3}",
            b"{\"error\": \"x\"}",
            b"\xff\xfe",
        ] {
            assert!(
                decode_line(line).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_line(&bytes);
        }

        #[test]
        fn truncated_messages_never_panic(cut in 0usize..200) {
            let line = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "id": [1, {"x": null}]}"#;
            let cut = cut.min(line.len());
            let r = decode_line(&line[..cut]);
            prop_assert!(cut == line.len() || r.is_err());
        }

        #[test]
        fn arbitrary_json_objects_never_panic(
            keys in proptest::collection::vec(prop_oneof![
                Just("QMP".to_string()), Just("return".to_string()), Just("error".to_string()),
                Just("event".to_string()), Just("data".to_string()), Just("id".to_string()),
                Just("timestamp".to_string()), "[a-z]{1,5}"], 0..6),
            vals in proptest::collection::vec(prop_oneof![
                Just(json!(null)), any::<i64>().prop_map(|v| json!(v)), ".{0,8}".prop_map(|v| json!(v)),
                Just(json!({"class": 1, "desc": []})), Just(json!({"seconds": -1, "microseconds": u64::MAX})),
                Just(json!([]))], 6),
        ) {
            let obj: Map<String, Value> = keys.into_iter().zip(vals).collect();
            let _ = decode_line(&serde_json::to_vec(&Value::Object(obj)).unwrap());
        }
    }
}
