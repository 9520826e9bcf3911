// Emitting a value that is not an event: the message says what to implement.
use flowline::StepContext;

struct Reminder;

fn remind(ctx: &StepContext) {
    let _ = ctx.emit(&Reminder);
}

fn main() {
    let _ = remind;
}
