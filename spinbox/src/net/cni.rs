//! Running CNI plugins: configuration lists, `ADD` and `DEL`, results and errors.
