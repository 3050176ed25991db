//! Fixture: a log editor that adds the label `stamped-by = stamp` to every
//! record, keeping the others. Built against `wit/`, a frozen copy of
//! `sluice:policy@1.1.0`, it shows that components built for 1.1 keep loading
//! on later 1.x hosts.
wit_bindgen::generate!({ world: "editor-policy", path: "wit" });

use exports::sluice::policy::editor::Guest as Editor;
use exports::sluice::policy::lifecycle::Guest as Lifecycle;
use sluice::policy::context::Usage;
use sluice::policy::types::Label;

struct Stamp;
impl Lifecycle for Stamp {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}
impl Editor for Stamp {
    fn edit(rec: &Usage) -> bool {
        let mut labels = rec.labels();
        labels.push(Label {
            name: "stamped-by".into(),
            value: "stamp".into(),
        });
        rec.set_labels(&labels);
        true
    }
}
export!(Stamp);
