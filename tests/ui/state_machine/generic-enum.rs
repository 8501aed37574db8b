use lifecycle_core::state_machine;

#[state_machine(transitions(go: A => B))]
enum S<T> {
    #[initial]
    A,
    B,
    #[doc(hidden)]
    _Marker(core::marker::PhantomData<T>),
}

fn main() {}
