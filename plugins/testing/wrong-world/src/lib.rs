//! Fixture: a well-formed component that implements an unrelated world.
wit_bindgen::generate!({ world: "greeter", path: "wit" });

struct Greeter;
impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}
export!(Greeter);
