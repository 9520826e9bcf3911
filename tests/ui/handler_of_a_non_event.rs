// A step subscribed to a type that is not an event: the message says what
// to implement.
use flowline::Step;

#[derive(serde::Serialize, serde::Deserialize)]
struct Signup {
    user: String,
}

fn main() {
    let _ = Step::event::<Signup>("welcome");
}
