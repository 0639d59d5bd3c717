import torch

from fl_ee.learning.augment import crop_and_flip, shift_and_flip
from fl_ee.learning.device import client_device

IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one 1-channel 2x2 image


def window(dy: int, dx: int, flip: bool) -> list:
    return shift_and_flip(IMAGE, torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]))[0, 0].tolist()


def test_the_crop_shifts_the_image_inside_its_zero_padding_and_the_flip_mirrors_it():
    assert window(4, 4, False) == [[1, 2], [3, 4]]  # the centre window: the image itself
    assert window(5, 4, False) == [[3, 4], [0, 0]]  # one row down: the image moves up
    assert window(4, 3, False) == [[0, 1], [0, 3]]  # one column left: the image moves right
    assert window(4, 4, True) == [[2, 1], [4, 3]]
    assert window(0, 0, False) == [[0, 0], [0, 0]]  # the corner of the padding


def test_augmentation_is_drawn_from_the_generator():
    x = torch.randn(16, 3, 8, 8)
    a = crop_and_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, crop_and_flip(x, torch.Generator().manual_seed(1))) and a.shape == x.shape
    assert not torch.equal(a, crop_and_flip(x, torch.Generator().manual_seed(2)))


def test_clients_use_the_gpu_only_when_given_a_share_and_cuda_is_there():
    assert client_device(0.5, cuda_available=True) == torch.device("cuda")
    assert client_device(0.0, cuda_available=True) == torch.device("cpu")
    assert client_device(0.5, cuda_available=False) == torch.device("cpu")
    assert client_device(0.0) == torch.device("cpu")
