use multiproc::parallel;

struct Counter(u64);

impl Counter {
    #[parallel]
    fn get(self) -> u64 {
        self.0
    }
}

fn main() {}
