"""The model zoo: ``bitnet.models.get(name, **kwargs)``; ``bitnet.models.names()`` lists them."""
from bitnet.models.registry import get, names, register  # noqa: F401
from bitnet.models.pretrained import available as pretrained_models, pretrained_path  # noqa: F401
from bitnet.models import binary_vgg as _binary_vgg, lenet as _lenet, resnet as _resnet  # noqa: F401,E402
