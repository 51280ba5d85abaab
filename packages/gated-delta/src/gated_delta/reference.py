"""Plain PyTorch versions of the operators: the specification the kernels are tested against."""
