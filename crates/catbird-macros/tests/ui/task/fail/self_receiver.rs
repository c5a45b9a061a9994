struct Mailer;

impl Mailer {
    #[catbird::task]
    async fn send_email(&self, to: String) -> anyhow::Result<()> {
        let _ = to;
        Ok(())
    }
}

fn main() {
    let _ = Mailer.send_email(String::new());
}
