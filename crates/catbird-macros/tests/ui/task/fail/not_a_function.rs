#[catbird::task]
struct SendEmail {
    to: String,
}

fn main() {}
